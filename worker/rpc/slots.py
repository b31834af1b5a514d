"""What GetSlots, SaveSlot, RestoreSlot and EraseSlot answer (engine/slot_control.py), in
protobuf."""

from __future__ import annotations

import dataclasses

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.requests import Sampling
from llamagrid.worker.engine.sampling import resolve
from llamagrid.worker.engine.slot_control import SlotReport, SlotRestored, SlotSaved
from llamagrid.worker.native.sampler import SamplerConfig

#: Resolved sampler options copied into SlotState.sampling: SamplingParams' single fields that
#: SamplerConfig has under the same name.
_SAME_NAME = tuple(
    f.name
    for f in pb.SamplingParams.DESCRIPTOR.fields
    if not f.is_repeated and f.name in {c.name for c in dataclasses.fields(SamplerConfig)}
)


def sampling_report(sampling: Sampling | None, n_ctx: int, max_tokens: int) -> pb.SamplingParams:
    """A request's sampling options with every default filled in (the defaults for none)."""
    given = sampling or Sampling()
    cfg = resolve(given, n_ctx)
    out = pb.SamplingParams(**{name: getattr(cfg, name) for name in _SAME_NAME})
    out.stop.extend(given.stop)
    out.ignore_eos = given.ignore_eos
    out.dry_sequence_breakers.extend(cfg.dry_sequence_breakers)
    out.samplers.extend(cfg.samplers)
    if max_tokens:
        out.max_tokens = max_tokens
    if given.top_logprobs is not None:
        out.top_logprobs = given.top_logprobs
    return out


def slot_to_proto(report: SlotReport) -> pb.SlotState:
    """One slot's state."""
    return pb.SlotState(
        id=report.id,
        n_ctx=report.n_ctx,
        processing=report.processing,
        request_id=report.request_id,
        session_id=report.session_id,
        tokens_cached=report.tokens_cached,
        prompt_tokens=report.prompt_tokens,
        generated_tokens=report.generated_tokens,
        max_tokens=report.max_tokens,
        choice=report.choice,
        sampling=sampling_report(report.sampling, report.n_ctx, report.max_tokens),
    )


def saved_to_proto(saved: SlotSaved) -> pb.SaveSlotResponse:
    """What SaveSlot did."""
    return pb.SaveSlotResponse(
        id=saved.id,
        filename=saved.filename,
        tokens_saved=saved.tokens,
        bytes_written=saved.bytes_written,
        save_ms=saved.ms,
    )


def restored_to_proto(restored: SlotRestored) -> pb.RestoreSlotResponse:
    """What RestoreSlot did."""
    return pb.RestoreSlotResponse(
        id=restored.id,
        filename=restored.filename,
        tokens_restored=restored.tokens,
        bytes_read=restored.bytes_read,
        restore_ms=restored.ms,
    )
