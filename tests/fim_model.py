"""A copy of the test model whose GGUF metadata declares fill-in-the-middle tokens.

SmolLM2-135M's vocabulary has no FIM tokens (llama.cpp finds none), so a worker on it refuses
infilling. The copy, written with the ``gguf`` package, names five of its existing control
tokens as the FIM prefix, suffix, middle, repository and file-separator tokens: the model was
not trained for them, but the worker builds its infill prompts from them, which is what the
tests look at.
"""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from llamagrid.worker.model_source import default_model_path

#: The control tokens of SmolLM2's vocabulary that the copy declares as FIM tokens.
FIM_IDS = {
    "prefix": 7,  # <gh_stars>
    "suffix": 8,  # <issue_start>
    "middle": 9,  # <issue_comment>
    "repo": 3,  # <repo_name>
    "separator": 5,  # <file_sep>
}
_KEYS = {
    "prefix": gguf.Keys.Tokenizer.FIM_PRE_ID,
    "suffix": gguf.Keys.Tokenizer.FIM_SUF_ID,
    "middle": gguf.Keys.Tokenizer.FIM_MID_ID,
    "repo": gguf.Keys.Tokenizer.FIM_REP_ID,
    "separator": gguf.Keys.Tokenizer.FIM_SEP_ID,
}


def write_fim_model(path: Path) -> Path:
    """Write the copy to ``path``."""
    reader = gguf.GGUFReader(default_model_path(), "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(path, arch=str(arch.contents()), endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    metadata = {
        _KEYS[name]: MetadataDetails(gguf.GGUFValueType.UINT32, token)
        for name, token in FIM_IDS.items()
    }
    copy_with_new_metadata(reader, writer, metadata, [])
    return path
