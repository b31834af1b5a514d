"""Translation between llamagrid.v1 protobuf messages and the engine's own types."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.errors import invalid
from llamagrid.worker.engine.events import (
    Chunk,
    Event,
    Final,
    FinishReason,
    LogprobEntry,
    TokenLogprob,
    ToolCallDelta,
)
from llamagrid.worker.engine.lora import LoraAdapter, LoraScale
from llamagrid.worker.engine.reports import KvTier, Load, ModelDescription, SessionReport
from llamagrid.worker.engine.requests import (
    ContentPart,
    GenerationSpec,
    Grammar,
    ImageInput,
    Infill,
    InfillChunk,
    JsonSchema,
    Message,
    ReasoningFormat,
    Sampling,
    SessionRef,
    Tool,
    ToolCall,
    ToolChoice,
)
from llamagrid.worker.native.devices import DeviceInfo, Placement

_FINISH = {
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.STOP_STRING: pb.FINISH_REASON_STOP_STRING,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_TIERS = {
    KvTier.RESIDENT: pb.KV_TIER_RESIDENT,
    KvTier.HOST: pb.KV_TIER_HOST,
    KvTier.TRANSCRIPT: pb.KV_TIER_TRANSCRIPT,
}
_CONSTRAINTS: dict[str, type[Grammar | JsonSchema]] = {
    "grammar": Grammar,
    "json_schema": JsonSchema,
}
#: The proto's optional sampling fields: those Sampling leaves None when unset.
_OPTIONAL_FIELDS = frozenset(f.name for f in dataclasses.fields(Sampling) if f.default is None)


def sampling_from_proto(p: pb.SamplingParams) -> Sampling:
    """Sampling options; unset optional fields stay None."""
    values = {f.name: v for f, v in p.ListFields() if f.name in _OPTIONAL_FIELDS}
    constraint = p.WhichOneof("constraint")
    return Sampling(
        **values,
        logit_bias=dict(p.logit_bias),
        stop=tuple(p.stop),
        ignore_eos=p.ignore_eos,
        constraint=_CONSTRAINTS[constraint](getattr(p, constraint)) if constraint else None,
        dry_sequence_breakers=tuple(p.dry_sequence_breakers),
        samplers=tuple(p.samplers),
    )


def generation_from_proto(req: pb.GenerateRequest) -> GenerationSpec:
    """The engine request for a GenerateRequest, as sent: the engine validates it."""
    sampling = sampling_from_proto(req.sampling)
    which = req.WhichOneof("input")
    return GenerationSpec(
        prompt=req.prompt if which == "prompt" else None,
        tokens=tuple(req.tokens.ids) if which == "tokens" else None,
        messages=tuple(_message(m) for m in req.chat.messages) if which == "chat" else None,
        infill=_infill(req.infill) if which == "infill" else None,
        sampling=sampling,
        request_id=req.request_id,
        session=_session_ref(req),
        tools=tuple(_tool(t) for t in req.tools),
        tool_choice=_tool_choice(req),
        tool_function=req.tool_choice.function
        if req.tool_choice.WhichOneof("choice") == "function"
        else None,
        parallel_tool_calls=(
            req.parallel_tool_calls if req.HasField("parallel_tool_calls") else True
        ),
        chat_template_kwargs=req.chat_template_kwargs,
        reasoning_effort=req.reasoning_effort,
        reasoning_format=_reasoning_format(req.reasoning_format),
        n=req.n if req.HasField("n") else None,
        prompt_logprobs=req.prompt_logprobs if req.HasField("prompt_logprobs") else None,
        echo=req.echo,
        lora=tuple(lora_from_proto(req.lora)) or None,
        images=tuple(_image(i) for i in req.images),
    )


def _image(p: pb.Image) -> ImageInput:
    return ImageInput(p.data, p.mime_type)


def _part(p: pb.ContentPart) -> ContentPart:
    """A message part; one that sets neither text nor image is refused."""
    which = p.WhichOneof("part")
    if which == "image":
        return _image(p.image)
    if which == "text":
        return p.text
    raise invalid("a message part must hold text or an image", "messages")


def _infill(p: pb.Infill) -> Infill:
    extra = tuple(InfillChunk(c.filename, c.text) for c in p.extra)
    return Infill(p.prefix, p.suffix, extra, p.prompt)


def _session_ref(req: pb.GenerateRequest) -> SessionRef | None:
    if not req.HasField("session"):
        return None
    ref = req.session
    expected = ref.expected_turns if ref.HasField("expected_turns") else None
    return SessionRef(ref.session_id, expected)


def session_to_proto(report: SessionReport) -> pb.SessionInfo:
    """A session's description (the model alias is the caller's to fill)."""
    return pb.SessionInfo(
        session_id=report.session_id,
        length=report.length,
        turn_ends=report.turn_ends,
        expires_unix_ms=report.expires_unix_ms,
        ttl_s=report.ttl_s,
        kv_tier=_TIERS[report.kv_tier],
        busy=report.busy,
        images=report.images,
    )


def messages_from_proto(chat: pb.ChatConversation) -> list[Message]:
    """The messages of a conversation."""
    return [_message(m) for m in chat.messages]


def _message(m: pb.ChatMessage) -> Message:
    return Message(
        m.role,
        m.content,
        m.name if m.HasField("name") else None,
        tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
        tool_call_id=m.tool_call_id,
        reasoning_content=m.reasoning_content,
        parts=tuple(_part(p) for p in m.parts),
    )


def _tool(t: pb.Tool) -> Tool:
    return Tool(t.name, t.description, t.parameters_json, t.strict)


_TOOL_CHOICES = {
    pb.TOOL_CHOICE_MODE_AUTO: ToolChoice.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: ToolChoice.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: ToolChoice.REQUIRED,
}
_REASONING_FORMATS = {
    pb.REASONING_FORMAT_NONE: ReasoningFormat.NONE,
    pb.REASONING_FORMAT_SPLIT: ReasoningFormat.SPLIT,
}


def _tool_choice(req: pb.GenerateRequest) -> ToolChoice | None:
    """The mode; None when unset (auto) or when a function is named."""
    mode = req.tool_choice.mode
    if req.tool_choice.WhichOneof("choice") != "mode" or mode == pb.TOOL_CHOICE_MODE_UNSPECIFIED:
        return None
    if mode not in _TOOL_CHOICES:
        raise invalid(f"tool_choice.mode {mode} is not a known mode", "tool_choice")
    return _TOOL_CHOICES[mode]


def _reasoning_format(value: pb.ReasoningFormat.ValueType) -> ReasoningFormat | None:
    """None when unset (the worker's default)."""
    if value == pb.REASONING_FORMAT_UNSPECIFIED:
        return None
    if value not in _REASONING_FORMATS:
        raise invalid(f"reasoning_format {value} is not a known format", "reasoning_format")
    return _REASONING_FORMATS[value]


def _entry(e: LogprobEntry) -> pb.LogprobEntry:
    return pb.LogprobEntry(
        token_id=e.token_id,
        token=e.token_bytes.decode("utf-8", errors="replace"),
        raw=e.token_bytes,
        logprob=e.logprob,
    )


def _logprob(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(chosen=_entry(lp.chosen), top=[_entry(e) for e in lp.top])


def chunks_to_proto(chunks: list[Chunk]) -> pb.GenerateResponse:
    """One GenerateChunk from one or more consecutive engine chunks of one choice."""
    out = pb.GenerateChunk(index=chunks[0].index if chunks else 0)
    for c in chunks:
        out.prompt_text += c.prompt_text
        out.prompt_logprobs.extend(_logprob(lp) for lp in c.prompt_logprobs)
        out.text += c.text
        out.token_ids.extend(c.token_ids)
        out.logprobs.extend(_logprob(lp) for lp in c.logprobs)
        out.reasoning += c.reasoning
        for delta in c.tool_calls:
            _add_call_delta(out, delta)
    return pb.GenerateResponse(chunk=out)


def _add_call_delta(out: pb.GenerateChunk, delta: ToolCallDelta) -> None:
    """Append a tool-call delta, merged into the previous one when it continues its
    arguments."""
    last = out.tool_calls[-1] if out.tool_calls else None
    if last is not None and last.index == delta.index and not delta.id and not delta.name:
        last.arguments += delta.arguments
    else:
        out.tool_calls.append(
            pb.ToolCallDelta(
                index=delta.index, id=delta.id, name=delta.name, arguments=delta.arguments
            )
        )


def batch_to_proto(batch: Sequence[Event]) -> list[pb.GenerateResponse]:
    """The messages for a batch of engine events: one GenerateChunk per choice for all its chunks
    in the batch (the tokens of one engine step, or of several when the consumer fell behind),
    then the final messages the batch holds (a choice's final event is its last). Admission
    travels as the call's initial metadata, not here."""
    by_choice: dict[int, list[Chunk]] = {}
    for event in batch:
        if isinstance(event, Chunk):
            by_choice.setdefault(event.index, []).append(event)
    out = [chunks_to_proto(chunks) for chunks in by_choice.values()]
    out.extend(final_to_proto(event) for event in batch if isinstance(event, Final))
    return out


def final_to_proto(f: Final) -> pb.GenerateResponse:
    """The closing message of a Generate stream."""
    u = f.usage
    usage = pb.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        cached_tokens=u.cached_tokens,
        queue_ms=u.queue_ms,
        prefill_ms=u.prefill_ms,
        decode_ms=u.decode_ms,
        prefilled_tokens=u.prompt_tokens - u.cached_tokens - u.restored_tokens,
        restored_tokens=u.restored_tokens,
    )
    final = pb.GenerateFinal(
        finish_reason=_FINISH[f.finish_reason],
        usage=usage,
        matched_stop=f.matched_stop,
        tool_calls=[pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in f.tool_calls],
        index=f.index,
    )
    if f.session is not None:
        final.session.turns = f.session.turns
        final.session.length = f.session.length
        final.session.appended_token_ids.extend(f.session.appended)
        final.session.image_starts.extend(f.session.image_starts)
    return pb.GenerateResponse(final=final)


_DEVICE_TYPES = {
    "cpu": pb.DEVICE_TYPE_CPU,
    "gpu": pb.DEVICE_TYPE_GPU,
    "igpu": pb.DEVICE_TYPE_IGPU,
    "accel": pb.DEVICE_TYPE_ACCEL,
}


def _device(d: DeviceInfo) -> pb.Device:
    return pb.Device(
        name=d.name,
        description=d.description,
        type=_DEVICE_TYPES.get(d.type, pb.DEVICE_TYPE_UNSPECIFIED),
        backend=d.backend,
        memory_total_bytes=d.memory_total,
        memory_free_bytes=d.memory_free,
        device_id=d.device_id,
        layers=d.layers,
    )


def placement_to_proto(p: Placement) -> pb.DevicePlacement:
    """Where the model runs: the settings and the devices llama.cpp uses."""
    return pb.DevicePlacement(
        backend=p.backend,
        visible_devices=list(p.visible_devices),
        n_gpu_layers=p.n_gpu_layers,
        main_gpu=p.main_gpu,
        split_mode=p.split_mode,
        tensor_split=list(p.tensor_split),
        devices=[_device(d) for d in p.devices],
        offloaded_layers=p.offloaded_layers,
        total_layers=p.total_layers,
    )


def model_info_to_proto(
    d: ModelDescription, placement: Placement, adapters: Sequence[LoraAdapter] = ()
) -> pb.ModelInfo:
    """ModelInfo for GetModelInfo and ListModels, with the LoRA adapters' current scales."""
    vision = d.media_marker is not None
    caps = [
        c
        for c, on in (
            (pb.CAPABILITY_GENERATE, d.can_generate),
            (pb.CAPABILITY_EMBED, d.can_embed),
            (pb.CAPABILITY_VISION, vision),
        )
        if on
    ]
    info = pb.ModelInfo(
        alias=d.alias,
        file=d.file,
        hf_repo=d.hf_repo,
        context_size=d.context_per_slot,
        train_context_size=d.train_context_size,
        parameter_count=d.parameter_count,
        size_bytes=d.size_bytes,
        chat_template=d.chat_template,
        capabilities=caps,
        slots=d.slots,
        embedding_size=d.embedding_size,
        vocab_size=d.vocab_size,
        pooling=d.pooling,
        description=d.description,
        placement=placement_to_proto(placement),
        fill_in_middle=d.fill_in_middle,
        vision=vision,
        media_marker=d.media_marker or "",
    )
    if d.embedding_dimensions.allowed:
        info.embedding_dimensions.any = d.embedding_dimensions.any
        info.embedding_dimensions.sizes.extend(d.embedding_dimensions.sizes)
    info.adapters.extend(adapters_to_proto(adapters))
    return info


def adapters_to_proto(adapters: Sequence[LoraAdapter]) -> list[pb.LoraAdapter]:
    """The LoRA adapters as ListLoraAdapters, SetLoraAdapters and ModelInfo give them."""
    return [pb.LoraAdapter(id=a.id, path=a.path, scale=a.scale) for a in adapters]


def lora_from_proto(entries: Sequence[pb.LoraScale]) -> list[LoraScale]:
    """A list of adapter scales, as sent: the engine checks it."""
    return [LoraScale(e.id, e.scale) for e in entries]


def load_to_proto(load: Load) -> pb.GetLoadResponse:
    """The GetLoad answer for an engine load snapshot."""
    return pb.GetLoadResponse(
        active_requests=load.active,
        queued_requests=load.queued,
        slots=load.slots,
        max_queue=load.max_queue,
        kv_cells_used=load.kv_cells_used,
        kv_cells_total=load.kv_cells_total,
        embed_queued_inputs=load.embed_queued,
        decode_steps=load.decode_steps,
        sessions=load.sessions,
        max_sessions=load.max_sessions,
        host_cache_bytes=load.host_cache_bytes,
        host_cache_saves=load.host_cache_saves,
        host_cache_restores=load.host_cache_restores,
        session_tokens_reprefilled=load.session_tokens_reprefilled,
        sessions_resident=load.session_tiers.resident,
        sessions_host=load.session_tiers.host,
        sessions_transcript=load.session_tiers.transcript,
    )
