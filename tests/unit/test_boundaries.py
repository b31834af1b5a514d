"""The package boundaries, read from the source with ast: who may import what.

Every import statement counts, wherever it is: at the top, inside a function, under
``if TYPE_CHECKING``. ``from a import b`` counts as importing both ``a`` and ``a.b`` (b may be a
submodule). The scan covers what the two wheels ship: src/llamagrid (cli.py, __main__.py and,
through its symlinks, worker/, gateway/, fleet/, supervisor/) and clients/python/llamagrid.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Folders holding ``llamagrid.*`` modules (symlinked folders are walked where they point).
TREES = (ROOT / "src" / "llamagrid", ROOT / "clients" / "python" / "llamagrid")


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is imported, and by which module."""

    module: str
    path: Path
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.module} imports {self.name}"


def module_files() -> Iterator[tuple[str, Path]]:
    """Every (module name, real file) of the llamagrid namespace in TREES."""
    for tree in TREES:
        for folder, dirs, files in os.walk(tree, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for file in sorted(f for f in files if f.endswith(".py")):
                path = Path(folder, file)
                parts = ["llamagrid", *path.relative_to(tree).with_suffix("").parts]
                if parts[-1] == "__init__":
                    parts.pop()
                yield ".".join(parts), path.resolve()


def imported_names(module: str, source: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import statement anywhere in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


@cache
def all_imports() -> tuple[Import, ...]:
    found = []
    for module, path in module_files():
        is_package = path.name == "__init__.py"
        for line, name in imported_names(module, path.read_text(), is_package):
            found.append(Import(module, path, line, name))
    return tuple(found)


def within(name: str, *prefixes: str) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_grpc(name: str) -> bool:
    """grpc itself, a grpc_* package (grpc_health, grpc_status, ...) or google.rpc."""
    top = name.split(".")[0]
    return top == "grpc" or top.startswith("grpc_") or within(name, "google.rpc")


def assert_none(rule: str, importer: Callable[[str], bool], banned: Callable[[str], bool]) -> None:
    """Fail, listing file and line of each, if a module ``importer`` accepts imports a name
    ``banned`` accepts."""
    bad = [str(i) for i in all_imports() if importer(i.module) and banned(i.name)]
    if bad:
        pytest.fail(f"{rule}:\n  " + "\n  ".join(bad), pytrace=False)


def test_the_scan_sees_every_kind_of_import_statement() -> None:
    source = textwrap.dedent(
        """
        import a.b as ab
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from c import d
        def f():
            from . import sibling
            from ..up import thing
        """
    )
    names = {name for _, name in imported_names("llamagrid.worker.engine.slot", source)}
    assert {"a.b", "c", "c.d", "llamagrid.worker.engine.sibling"} <= names
    assert {"llamagrid.worker.up", "llamagrid.worker.up.thing"} <= names
    # And on the real tree: the native room's llama_cpp and the CLI's lazy import are seen.
    seen = {(i.module, i.name) for i in all_imports()}
    assert ("llamagrid.worker.native.llama_backend", "llama_cpp") in seen
    assert ("llamagrid.cli", "llamagrid.supervisor.serve") in seen
    assert any(i.path.parent == ROOT / "worker" / "engine" for i in all_imports())


def test_only_the_native_room_imports_llama_cpp() -> None:
    # This covers the gateway, which must never import llama_cpp.
    assert_none(
        "only llamagrid.worker.native may import llama_cpp",
        lambda module: not within(module, "llamagrid.worker.native"),
        lambda name: within(name, "llama_cpp"),
    )


def test_the_engine_imports_no_transport() -> None:
    assert_none(
        "llamagrid.worker.engine must not import grpc, grpc_*, google.rpc, the generated stubs "
        "(llamagrid.v1) or the gRPC layer (llamagrid.worker.rpc)",
        lambda module: within(module, "llamagrid.worker.engine"),
        lambda name: is_grpc(name) or within(name, "llamagrid.v1", "llamagrid.worker.rpc"),
    )


def test_the_gateway_and_the_worker_never_import_each_other() -> None:
    assert_none(
        "the gateway must not import the worker",
        lambda module: within(module, "llamagrid.gateway"),
        lambda name: within(name, "llamagrid.worker"),
    )
    assert_none(
        "the worker must not import the gateway",
        lambda module: within(module, "llamagrid.worker"),
        lambda name: within(name, "llamagrid.gateway"),
    )


def test_the_worker_imports_no_web_framework() -> None:
    assert_none(
        "the worker must not import fastapi or starlette",
        lambda module: within(module, "llamagrid.worker"),
        lambda name: within(name, "fastapi", "starlette"),
    )


def test_only_the_command_line_imports_the_supervisor() -> None:
    assert_none(
        "only llamagrid.cli (and the supervisor itself) may import llamagrid.supervisor",
        lambda module: not within(module, "llamagrid.cli", "llamagrid.supervisor"),
        lambda name: within(name, "llamagrid.supervisor"),
    )


#: Run in a fresh interpreter: grpc, its status protos and the generated stubs cannot be imported.
NO_GRPC = """
import importlib.abc, sys

class NoGrpc(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if (top == "grpc" or top.startswith("grpc_") or name == "google.rpc"
                or name.startswith(("google.rpc.", "llamagrid.v1"))):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, NoGrpc())

import importlib, pkgutil
import llamagrid.worker.engine as engine

for module in pkgutil.iter_modules(engine.__path__):  # every one, llama_engine included
    importlib.import_module(f"llamagrid.worker.engine.{module.name}")

from llamagrid.worker.engine import errors, events, requests, text_stream, validation

spec = requests.GenerationSpec(
    messages=(requests.Message("user", "Hi"),), sampling=requests.Sampling(temperature=-1.0)
)
try:
    validation.check_generation(spec, n_vocab=100)
except errors.EngineError as error:
    assert error.reason is errors.Reason.INVALID_VALUE and error.param == "temperature", error
else:
    raise AssertionError("a negative temperature passed")
validation.check_generation(requests.GenerationSpec(prompt="Hi"), n_vocab=100)

stream = text_stream.TextStream(["STOP"])
sent = [stream.feed(piece) for piece in (b"caf", b"\\xc3", b"\\xa9 ST", b"OP and more")]
assert "".join(d.text for d in sent) == "caf\\u00e9 " and sent[-1].stopped_by == "STOP", sent
assert events.FinishReason.STOP_STRING.value == "stop_string"

loaded = sorted(m for m in sys.modules if m.split(".")[0].startswith("grpc") or m == "google.rpc")
assert not loaded, loaded
print("engine ok without grpc")
"""


def test_the_engine_works_without_grpc_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_GRPC], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"the engine needs grpc (or broke without it):\n{out.stderr}"
    assert out.stdout.strip() == "engine ok without grpc"
