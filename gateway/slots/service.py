"""Slots across the fleet: which worker holds slot N of a model, and llama-server's shapes.

llama-server numbers the slots of its one process from 0. The gateway numbers the slots of a
model across its workers the same way: the workers that serve the model and are available, in
the order of their addresses, each contributing as many ids as it has slots. With one worker,
an id is the worker's own slot id. Each slot in GET /slots also names its worker and its id
there (``worker``, ``worker_slot``), so a client can tell where a saved file went: slot files
live in each worker's own --slot-save-path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamagrid.gateway.errors import OpenAIError, invalid_request, model_not_found
from llamagrid.gateway.pool import Worker, WorkerPool
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

#: Seconds allowed for one worker's slot call (a save or restore moves a file of up to a
#: slot's whole KV state).
SLOT_CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SlotRange:
    """The fleet-wide slot ids of one worker: first to first + count - 1."""

    worker: Worker
    first: int
    count: int


if TYPE_CHECKING:  # the async stub type exists only in the type stubs
    Stub = pb_grpc.InferenceServiceAsyncStub


def stub(worker: Worker) -> Stub:
    """An InferenceService stub on a worker's channel (its TLS and token included)."""
    return pb_grpc.InferenceServiceStub(worker.client.channel)


def model_of(pool: WorkerPool, name: str) -> str:
    """The model a slot request is about: ``name`` (already resolved), or the only one."""
    served = pool.models()
    if name:
        if name not in served:
            raise model_not_found(name)
        return name
    if len(served) == 1:
        return next(iter(served))
    if not served:
        raise OpenAIError(503, "No worker is available.", "service_unavailable_error")
    names = ", ".join(sorted(served))
    raise invalid_request(f"Several models are served ({names}): name one with ?model=.", "model")


def ranges(pool: WorkerPool, model: str) -> list[SlotRange]:
    """The fleet-wide numbering of the model's slots."""
    workers = sorted(
        (w for w in pool.workers if w.available and model in w.models), key=lambda w: w.address
    )
    out, first = [], 0
    for worker in workers:
        count = worker.models[model].slots or worker.slots
        out.append(SlotRange(worker, first, count))
        first += count
    return out


def locate(spans: list[SlotRange], slot_id: int) -> tuple[Worker, int]:
    """The worker holding fleet-wide slot ``slot_id``, and the slot's id there."""
    for span in spans:
        if span.first <= slot_id < span.first + span.count:
            return span.worker, slot_id - span.first
    total = sum(span.count for span in spans)
    raise invalid_request(
        f"Invalid slot id {slot_id}: this model has slots 0 to {total - 1}.", "id_slot"
    )


async def fleet_slots(spans: list[SlotRange], model: str) -> list[dict[str, Any]]:
    """Every slot of the model, in llama-server's shape, numbered fleet-wide."""
    request = pb.GetSlotsRequest(model=model)
    replies = await asyncio.gather(
        *(stub(span.worker).GetSlots(request, timeout=SLOT_CALL_TIMEOUT_S) for span in spans)
    )
    return [
        slot_json(state, span.first + state.id, span.worker.address, model)
        for span, reply in zip(spans, replies, strict=True)
        for state in reply.slots
        if state.id < span.count
    ]


def params_json(state: pb.SlotState) -> dict[str, Any]:
    """A slot's sampling settings under llama-server's names."""
    s = state.sampling
    return {
        "n_predict": state.max_tokens if state.processing else -1,
        "seed": s.seed,
        "temperature": s.temperature,
        "dynatemp_range": s.dynatemp_range,
        "dynatemp_exponent": s.dynatemp_exponent,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "top_n_sigma": s.top_n_sigma,
        "xtc_probability": s.xtc_probability,
        "xtc_threshold": s.xtc_threshold,
        "typical_p": s.typical_p,
        "repeat_last_n": s.repeat_last_n,
        "repeat_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "dry_multiplier": s.dry_multiplier,
        "dry_base": s.dry_base,
        "dry_allowed_length": s.dry_allowed_length,
        "dry_penalty_last_n": s.dry_penalty_last_n,
        "dry_sequence_breakers": list(s.dry_sequence_breakers),
        "mirostat": s.mirostat,
        "mirostat_tau": s.mirostat_tau,
        "mirostat_eta": s.mirostat_eta,
        "stop": list(s.stop),
        "n_keep": 0,
        "n_probs": s.top_logprobs,
        "min_keep": s.min_keep,
        "ignore_eos": s.ignore_eos,
        "samplers": list(s.samplers),
    }


def slot_json(state: pb.SlotState, slot_id: int, worker: str, model: str) -> dict[str, Any]:
    """One slot in llama-server's shape (both the README's older field names, ``state`` and
    ``task_id``, and the newer ``is_processing``, ``id_task`` and ``params``), plus where it
    is. The prompt's text is not shown: one client's prompt is not another's to read."""
    params = params_json(state)
    task = state.request_id if state.processing else -1
    remain = state.max_tokens - state.generated_tokens if state.processing else -1
    return {
        "id": slot_id,
        "id_task": task,
        "task_id": task,
        "n_ctx": state.n_ctx,
        "speculative": False,
        "is_processing": state.processing,
        "state": 1 if state.processing else 0,
        "model": model,
        "prompt": "",
        "tokens_cached": state.tokens_cached,
        "n_prompt_tokens": state.prompt_tokens,
        "next_token": {
            "has_next_token": state.processing,
            "has_new_line": False,
            "n_remain": remain,
            "n_decoded": state.generated_tokens,
            "stopped_eos": False,
            "stopped_limit": False,
            "stopped_word": False,
            "stopping_word": "",
        },
        "params": params,
        **params,
        "worker": worker,
        "worker_slot": state.id,
        "session_id": state.session_id,
        "choice": state.choice,
    }


async def save(
    worker: Worker, local: int, slot_id: int, model: str, filename: str
) -> dict[str, Any]:
    """POST /slots/{id}?action=save on the worker holding the slot."""
    request = pb.SaveSlotRequest(model=model, id=local, filename=filename)
    reply = await stub(worker).SaveSlot(request, timeout=SLOT_CALL_TIMEOUT_S)
    return {
        "id_slot": slot_id,
        "filename": reply.filename,
        "n_saved": reply.tokens_saved,
        "n_written": reply.bytes_written,
        "timings": {"save_ms": reply.save_ms},
        "worker": worker.address,
    }


async def restore(
    worker: Worker, local: int, slot_id: int, model: str, filename: str
) -> dict[str, Any]:
    """POST /slots/{id}?action=restore on the worker holding the slot."""
    request = pb.RestoreSlotRequest(model=model, id=local, filename=filename)
    reply = await stub(worker).RestoreSlot(request, timeout=SLOT_CALL_TIMEOUT_S)
    return {
        "id_slot": slot_id,
        "filename": reply.filename,
        "n_restored": reply.tokens_restored,
        "n_read": reply.bytes_read,
        "timings": {"restore_ms": reply.restore_ms},
        "worker": worker.address,
    }


async def erase(worker: Worker, local: int, slot_id: int, model: str) -> dict[str, Any]:
    """POST /slots/{id}?action=erase on the worker holding the slot."""
    request = pb.EraseSlotRequest(model=model, id=local)
    reply = await stub(worker).EraseSlot(request, timeout=SLOT_CALL_TIMEOUT_S)
    return {"id_slot": slot_id, "n_erased": reply.tokens_erased, "worker": worker.address}
