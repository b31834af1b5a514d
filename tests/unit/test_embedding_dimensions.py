"""The worker's --embedding-dimensions flag and the checks it makes on Embed requests."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.dimensions import EmbeddingDimensions
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.reports import ModelDescription
from llamagrid.worker.native.devices import Placement
from llamagrid.worker.rpc.translate import model_info_to_proto
from llamagrid.worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", EmbeddingDimensions()),
        ("any", EmbeddingDimensions(any=True)),
        (" ANY ", EmbeddingDimensions(any=True)),
        ("256,64, 128,64", EmbeddingDimensions(sizes=(64, 128, 256))),
        ("8", EmbeddingDimensions(sizes=(8,))),
    ],
)
def test_the_flag_parses(text: str, expected: EmbeddingDimensions) -> None:
    assert EmbeddingDimensions.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["0", "-8", "8.0", "x", "64,,128", "64;128", "²", "1" * 10, ",".join(map(str, range(1, 66)))],
)
def test_a_malformed_flag_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        EmbeddingDimensions.parse(text)
    with pytest.raises(ValidationError):
        WorkerSettings(embedding_dimensions=text)


def test_settings_take_a_list_from_a_config_file() -> None:
    settings = WorkerSettings(embedding_dimensions=[128, 64])
    assert EmbeddingDimensions.parse(settings.embedding_dimensions).sizes == (64, 128)


def test_a_width_wider_than_the_model_fails_the_load() -> None:
    EmbeddingDimensions.parse("64,576").check_model(576)
    with pytest.raises(ValueError, match="577"):
        EmbeddingDimensions.parse("64,577").check_model(576)


def refusal(allowed: EmbeddingDimensions, dimensions: int) -> EngineError:
    with pytest.raises(EngineError) as caught:
        allowed.check_request(dimensions, 576)
    assert caught.value.param == "dimensions"
    return caught.value


def test_a_model_without_the_flag_refuses_any_truncation_and_says_why() -> None:
    none = EmbeddingDimensions()
    none.check_request(None, 576)  # the full width is always fine
    for dimensions in (1, 64, 576, 10_000):
        error = refusal(none, dimensions)
        assert error.reason is Reason.UNSUPPORTED
        assert "Matryoshka" in error.message and "--embedding-dimensions" in error.message


def test_listed_widths_only() -> None:
    listed = EmbeddingDimensions(sizes=(64, 128))
    listed.check_request(64, 576)
    listed.check_request(128, 576)
    error = refusal(listed, 100)
    assert error.reason is Reason.INVALID_VALUE and "64, 128" in error.message


def test_any_width_up_to_the_model_width() -> None:
    anything = EmbeddingDimensions(any=True)
    for dimensions in (1, 100, 576):
        anything.check_request(dimensions, 576)
    assert "576" in refusal(anything, 577).message
    assert refusal(anything, 0).reason is Reason.INVALID_VALUE


DESCRIPTION = ModelDescription(
    alias="m",
    file="m.gguf",
    hf_repo="",
    context_per_slot=1024,
    train_context_size=2048,
    parameter_count=1,
    size_bytes=1,
    chat_template="",
    can_generate=True,
    can_embed=True,
    slots=1,
    embedding_size=576,
    vocab_size=10,
    pooling="mean",
    description="",
)


@pytest.mark.parametrize(
    ("allowed", "present", "any_", "sizes"),
    [
        (EmbeddingDimensions(), False, False, []),
        (EmbeddingDimensions(any=True), True, True, []),
        (EmbeddingDimensions(sizes=(64, 128)), True, False, [64, 128]),
    ],
)
def test_model_info_reports_the_widths(
    allowed: EmbeddingDimensions, present: bool, any_: bool, sizes: list[int]
) -> None:
    desc = dataclasses.replace(DESCRIPTION, embedding_dimensions=allowed)
    info: pb.ModelInfo = model_info_to_proto(desc, placement())
    assert info.HasField("embedding_dimensions") is present
    assert info.embedding_dimensions.any is any_
    assert list(info.embedding_dimensions.sizes) == sizes


def placement() -> Placement:
    return Placement(
        backend="cpu",
        visible_devices=(),
        n_gpu_layers=0,
        main_gpu=0,
        split_mode="layer",
        tensor_split=(),
        devices=(),
        offloaded_layers=0,
        total_layers=1,
    )
