"""Which served model a request's ``model`` names (gateway/model_names.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from llamagrid.gateway.model_names import resolve
from llamagrid.gateway.pool import WorkerPool


def pool(*models: tuple[str, ...]) -> WorkerPool:
    """A pool whose workers have these models (their health does not matter)."""
    workers = [SimpleNamespace(models=dict.fromkeys(aliases)) for aliases in models]
    return cast(Any, SimpleNamespace(workers=workers))


@pytest.mark.parametrize("name", ["gpt-3.5-turbo", "", "smollm2"])
def test_any_name_reaches_a_single_model(name: str) -> None:
    assert resolve(pool(("smollm2",), ("smollm2",)), name, strict=False) == "smollm2"


def test_strict_names_keep_unknown_names_but_still_fill_an_empty_one() -> None:
    assert resolve(pool(("smollm2",)), "gpt-4", strict=True) == "gpt-4"
    assert resolve(pool(("smollm2",)), "", strict=True) == "smollm2"


def test_with_several_models_an_unknown_name_stays_unknown() -> None:
    assert resolve(pool(("a",), ("b",)), "gpt-4", strict=False) == "gpt-4"
    assert resolve(pool(("a", "b")), "b", strict=False) == "b"


def test_no_model_known_leaves_the_name_as_it_is() -> None:
    assert resolve(pool(), "gpt-4", strict=False) == "gpt-4"
