"""GET /slots and POST /slots/{id_slot}?action=save|restore|erase, as llama-server serves them.

GET /slots lists every slot of a model (``?model=``; the only model by default) across its
workers, numbered fleet-wide (slots/service.py); ``?fail_on_no_slot=1`` turns a listing with
no idle slot into a 503. ``--no-slots-endpoint`` turns GET /slots off (a 501, as llama-server's
``--no-slots``). Slot actions need the worker's --slot-save-path (a 501 otherwise, as
llama-server answers without its own). Errors come in llama-server's shape (llamacpp.errors).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from llamagrid.gateway.dispatch import Dispatcher
from llamagrid.gateway.errors import OpenAIError, invalid_request, unsupported
from llamagrid.gateway.fields import refuse_undeclared
from llamagrid.gateway.llamacpp.errors import LlamaRoute, as_openai_error
from llamagrid.gateway.model_names import resolve_for
from llamagrid.gateway.slots import service
from llamagrid.gateway.slots.schemas import MAX_FILENAME_CHARS, SlotActionRequest
from llamagrid.gateway.slots.service import SlotRange

#: The error type llama-server gives what it does not support (its README's "API errors").
NOT_SUPPORTED = "not_supported_error"
#: The longest model name a query may carry.
MAX_MODEL_CHARS = 256
#: The most digits a slot id may have.
MAX_ID_DIGITS = 9
_GET_PARAMS = frozenset({"model", "fail_on_no_slot"})
_POST_PARAMS = frozenset({"model", "action"})

router = APIRouter(tags=["llama-server"], route_class=LlamaRoute, include_in_schema=False)


def _pool_spans(request: Request) -> tuple[str, list[SlotRange]]:
    """The model the query names (or the only one) and its slots' fleet-wide numbering."""
    name = request.query_params.get("model", "")
    if len(name) > MAX_MODEL_CHARS:
        raise invalid_request(f"model is longer than {MAX_MODEL_CHARS} characters.", "model")
    dispatcher = request.app.state.dispatcher
    assert isinstance(dispatcher, Dispatcher)
    model = service.model_of(dispatcher.pool, resolve_for(request, name) if name else "")
    return model, service.ranges(dispatcher.pool, model)


def _refuse_unknown_params(request: Request, known: frozenset[str]) -> None:
    for name in request.query_params:
        if name not in known:
            raise unsupported(name[:64])


@router.get("/slots")
async def slots(request: Request) -> list[dict[str, Any]]:
    """Every slot of the model: its state, the request it runs, the tokens it holds."""
    if not getattr(request.app.state, "slots_endpoint", True):
        raise OpenAIError(501, "This server does not support slots endpoint.", NOT_SUPPORTED)
    _refuse_unknown_params(request, _GET_PARAMS)
    fail = request.query_params.get("fail_on_no_slot", "0")
    if fail not in ("0", "1", "true", "false"):
        raise invalid_request("fail_on_no_slot must be 0 or 1.", "fail_on_no_slot")
    model, spans = _pool_spans(request)
    listed = await service.fleet_slots(spans, model)
    if fail in ("1", "true") and all(slot["is_processing"] for slot in listed):
        raise OpenAIError(503, "no slot available", "unavailable_error")
    return listed


def _slot_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > MAX_ID_DIGITS:
        raise invalid_request(f"Invalid slot id: give a number of at most {MAX_ID_DIGITS} digits.")
    return int(text)


def _filename(body: SlotActionRequest | None, action: str) -> str:
    """The body's filename, which save and restore need and erase refuses."""
    filename = body.filename if body is not None else None
    if action == "erase":
        if filename is not None:
            raise unsupported("filename", "The parameter 'filename' is not used by erase.")
        return ""
    if filename is None:
        raise invalid_request(f"A {action} needs a filename.", "filename")
    if len(filename) > MAX_FILENAME_CHARS:
        raise invalid_request(
            f"filename is longer than {MAX_FILENAME_CHARS} characters.", "filename"
        )
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_request("filename is not valid UTF-8.", "filename") from None
    return filename


@router.post("/slots/{id_slot}")
async def slot_action(
    id_slot: str, request: Request, body: SlotActionRequest | None = None
) -> dict[str, Any]:
    """Save a slot's KV cache to a file, restore it from one, or erase it."""
    _refuse_unknown_params(request, _POST_PARAMS)
    action = request.query_params.get("action", "")
    if action not in ("save", "restore", "erase"):
        raise invalid_request("Invalid action: give ?action=save, restore or erase.", "action")
    slot_id = _slot_id(id_slot)
    if body is not None:
        refuse_undeclared(body)
    filename = _filename(body, action)
    model, spans = _pool_spans(request)
    worker, local = service.locate(spans, slot_id)
    try:
        if action == "save":
            return await service.save(worker, local, slot_id, model, filename)
        if action == "restore":
            return await service.restore(worker, local, slot_id, model, filename)
        return await service.erase(worker, local, slot_id, model)
    except Exception as exc:
        raise _files_off(exc) from None


def _files_off(exc: Exception) -> Exception:
    """A worker without --slot-save-path answers 501 not_supported_error, as llama-server."""
    error = as_openai_error(exc)
    if error is None or error.code != "slot_files_off":
        return exc
    return OpenAIError(501, error.message, NOT_SUPPORTED, code=error.code)
