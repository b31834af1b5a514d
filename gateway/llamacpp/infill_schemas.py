"""The body of llama-server's POST /infill (no gRPC, no ML imports).

It is /completion's body (every sampling option, ``stream``, ``n_probs`` ...) with the code
around the cursor: ``input_prefix``, ``input_suffix``, ``input_extra`` (other files, as
``[{"filename", "text"}]``) and ``prompt``, the text the completion starts with after the
prefix. The worker bounds their sizes and the number of chunks.
"""

from __future__ import annotations

from pydantic import Field, StrictStr

from llamagrid.gateway.llamacpp.schemas import CompletionRequest, _Body


class InfillChunk(_Body):
    """One file of extra context."""

    #: The file's name, one line; empty or left out means "tmp", as in llama-server.
    filename: StrictStr = ""
    text: StrictStr = ""


class InfillRequest(CompletionRequest):
    """POST /infill: llama-server's code infilling."""

    input_prefix: StrictStr = ""
    input_suffix: StrictStr = ""
    input_extra: list[InfillChunk] = Field(default_factory=list)
    #: Text the completion starts with, right after the prefix (not a whole prompt).
    prompt: StrictStr = ""
