"""The gateway's slots across a fleet (gateway/slots/service.py): fleet-wide slot ids, and a
worker's slot in llama-server's shape."""

from __future__ import annotations

from typing import Any, cast

import pytest

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.pool import Worker
from llamagrid.gateway.slots.service import SlotRange, locate, slot_json
from llamagrid.v1 import inference_pb2 as pb


def worker(address: str) -> Worker:
    return Worker(address, cast(Any, None))


A, B = worker("10.0.0.1:50051"), worker("10.0.0.2:50051")
SPANS = [SlotRange(A, 0, 2), SlotRange(B, 2, 4)]


@pytest.mark.parametrize(
    ("slot_id", "where", "local"), [(0, A, 0), (1, A, 1), (2, B, 0), (5, B, 3)]
)
def test_a_fleet_wide_slot_id_names_one_worker_and_its_own_slot(
    slot_id: int, where: Worker, local: int
) -> None:
    assert locate(SPANS, slot_id) == (where, local)


def test_an_id_past_the_last_slot_is_a_400_naming_the_range() -> None:
    with pytest.raises(OpenAIError) as caught:
        locate(SPANS, 6)
    assert caught.value.status_code == 400 and caught.value.param == "id_slot"
    assert "0 to 5" in caught.value.message


def test_a_processing_slot_has_llama_servers_fields_and_says_where_it_is() -> None:
    state = pb.SlotState(
        id=1,
        n_ctx=2048,
        processing=True,
        request_id="cmpl-1",
        tokens_cached=30,
        prompt_tokens=20,
        generated_tokens=10,
        max_tokens=100,
        sampling=pb.SamplingParams(temperature=0.0, top_k=40, stop=["\n"], samplers=["top_k"]),
    )
    slot = slot_json(state, 3, B.address, "smollm2")
    assert slot["id"] == 3 and slot["worker"] == B.address and slot["worker_slot"] == 1
    assert slot["state"] == 1 and slot["is_processing"] is True
    assert slot["task_id"] == slot["id_task"] == "cmpl-1"
    assert slot["next_token"]["n_remain"] == 90 and slot["next_token"]["n_decoded"] == 10
    assert slot["n_predict"] == 100 and slot["params"]["n_predict"] == 100
    assert slot["stop"] == ["\n"] and slot["samplers"] == ["top_k"]
    assert slot["tokens_cached"] == 30 and slot["prompt"] == ""


def test_an_idle_slot_has_no_task_and_predicts_nothing() -> None:
    slot = slot_json(pb.SlotState(id=0, n_ctx=2048, tokens_cached=12), 0, A.address, "m")
    assert slot["state"] == 0 and slot["is_processing"] is False
    assert slot["id_task"] == -1 and slot["next_token"]["n_remain"] == -1
    assert slot["n_predict"] == -1 and slot["tokens_cached"] == 12
