"""The three test rings (design.md section 4): every test carries the marker of its folder.

- ``unit`` (tests/unit): pure, no model file, no toolchain, no network.
- ``contract`` (tests/contract): the gateway against an in-process fake worker.
- ``integration`` (tests/integration): real processes, the real model, native builds, toolchains.

``pytest -m unit`` (``make test-unit``) and the others select one ring. A test file outside the
three folders is an error, so no test escapes every ring.
"""

from __future__ import annotations

from pathlib import Path

import pytest

RINGS = ("unit", "contract", "integration")
TESTS = Path(__file__).resolve().parent


def ring_of(item: pytest.Item) -> str | None:
    """The ring folder the test's file is in, if any."""
    try:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
    except ValueError:
        return None
    return folder if folder in RINGS else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its ring, before ``-m`` selects on the marks."""
    for item in items:
        ring = ring_of(item)
        if ring is None:
            raise pytest.UsageError(
                f"{item.nodeid}: not in tests/unit, tests/contract or tests/integration"
            )
        item.add_marker(getattr(pytest.mark, ring))
