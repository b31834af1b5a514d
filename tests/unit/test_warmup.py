"""The gateway imports at start what the first request would otherwise import on the loop."""

from __future__ import annotations

import subprocess
import sys


def test_after_warm_up_no_anyio_name_is_left_to_import_lazily() -> None:
    # In a fresh interpreter: this one may have resolved some names already.
    code = (
        "import sys, anyio\n"
        "from llamagrid.gateway.warmup import warm_up\n"
        "lazy = [n for n in dir(anyio) if n not in vars(anyio)]\n"
        "assert lazy, 'anyio no longer imports lazily: drop it from LAZY_PACKAGES'\n"
        "warm_up()\n"
        "left = [n for n in dir(anyio) if n not in vars(anyio)]\n"
        "assert not left, left\n"
        "assert 'anyio.streams.memory' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
