"""Fill-in-the-middle (code infilling) prompts, built from the model's FIM tokens.

The layout is llama-server's (its /infill route), token by token, so that a model trained for
it sees what it saw there. With a repository token and a file-separator token (Qwen2.5-Coder's
repo-level pattern):

    <repo>myproject\\n <sep>name\\n text ... <sep>filename\\n
    [BOS] <pre>prefix prompt <suf>suffix <mid>

Without a repository token the project line is left out; without a file separator every extra
chunk is introduced by a blank-line "--- snippet ---" line instead, and no current-file line
follows. Every client text (prefix, suffix, prompt, file names and texts) is tokenized as plain
text: special-token text in it is ordinary characters.

What does not fit is trimmed as llama-server trims it, against the worker's batch size and the
context of one request:

- the prefix keeps its last tokens, at most 3/4 of a batch;
- the suffix keeps its first tokens, at most 1/4 of a batch less the prompt and two tokens;
- the extra context keeps its last tokens, at most the context less a batch and twice the
  tokens to generate (and never more than leaves room for the completion: llama-server's rule
  alone could fill the context when the request sets no max_tokens).

A model without prefix, suffix and middle tokens cannot infill: the request is refused.
Pure: the vocabulary comes in as a tokenize function (the native room reads the FIM token ids).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from llamagrid.worker.engine.errors import invalid, unsupported
from llamagrid.worker.engine.requests import Infill, InfillChunk

#: The most chunks of extra context one request may give.
MAX_INFILL_CHUNKS = 64
#: The longest file name of a chunk, in UTF-8 bytes.
MAX_FILENAME_BYTES = 256
#: A chunk's file name when the client gives none (llama-server's).
DEFAULT_FILENAME = "tmp"
#: The project line after the repository token (llama-server's fixed name).
PROJECT_LINE = "myproject\n"
#: The current file's line after the last file separator (llama-server's fixed name).
CURRENT_FILE_LINE = "filename\n"
#: What introduces each extra chunk when the model has no file-separator token.
SNIPPET_LINE = "\n\n--- snippet ---\n\n"
#: Why a model without FIM tokens refuses infilling.
NO_FIM = "this model has no fill-in-the-middle tokens, so it cannot fill in code"

#: Token ids of a plain text (no BOS, special-token text not parsed).
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class FimTokens:
    """A vocabulary's fill-in-the-middle token ids (None where it has no such token)."""

    prefix: int
    suffix: int
    middle: int
    repo: int | None = None
    separator: int | None = None

    @classmethod
    def of(
        cls, prefix: int, suffix: int, middle: int, repo: int = -1, separator: int = -1
    ) -> FimTokens | None:
        """The FIM tokens from llama.cpp's ids (negative: none), or None when prefix, suffix or
        middle is missing (the model cannot infill)."""
        if min(prefix, suffix, middle) < 0:
            return None
        return cls(
            prefix,
            suffix,
            middle,
            repo if repo >= 0 else None,
            separator if separator >= 0 else None,
        )


@dataclass(frozen=True)
class InfillBudget:
    """How many tokens of each part an infill prompt keeps."""

    prefix: int
    suffix: int
    extra: int


def budget(
    n_prefix: int,
    n_suffix: int,
    n_prompt: int,
    n_extra: int,
    n_batch: int,
    n_ctx: int,
    n_predict: int,
    n_fixed: int,
) -> InfillBudget:
    """The tokens kept of prefix, suffix and extra context (module docstring). n_fixed counts
    the tokens that are always there (BOS and the prefix, suffix and middle tokens); n_predict
    is the request's max_tokens, 0 when unset."""
    n_batch = max(0, min(n_batch, n_ctx))
    prefix = min(n_prefix, 3 * (n_batch // 4))
    suffix = min(n_suffix, max(0, n_batch // 4 - (2 + n_prompt)))
    room = n_ctx - n_fixed - prefix - suffix - n_prompt - max(1, n_predict)
    extra = min(n_extra, max(0, n_ctx - n_batch - 2 * n_predict), max(0, room))
    return InfillBudget(prefix, suffix, extra)


def infill_tokens(
    infill: Infill,
    fim: FimTokens | None,
    tokenize: Tokenize,
    bos: int | None,
    n_batch: int,
    n_ctx: int,
    n_predict: int,
) -> list[int]:
    """The prompt of an infill request as token ids; bos is the BOS id when the model wants
    one. Refused when the model has no FIM tokens."""
    if fim is None:
        raise unsupported(NO_FIM, "infill")
    prefix = tokenize(infill.prefix) if infill.prefix else []
    suffix = tokenize(infill.suffix) if infill.suffix else []
    prompt = tokenize(infill.prompt) if infill.prompt else []
    extra = _extra_tokens(infill.extra, fim, tokenize)
    fixed = 3 + (bos is not None)
    keep = budget(
        len(prefix), len(suffix), len(prompt), len(extra), n_batch, n_ctx, n_predict, fixed
    )
    bos_ids = [] if bos is None else [bos]
    return [
        *_last(extra, keep.extra),
        *bos_ids,
        fim.prefix,
        *_last(prefix, keep.prefix),
        *prompt,
        fim.suffix,
        *suffix[: keep.suffix],
        fim.middle,
    ]


def _last(tokens: list[int], count: int) -> list[int]:
    """The last count tokens (none when count is 0)."""
    return tokens[len(tokens) - count :] if count > 0 else []


def _extra_tokens(chunks: Sequence[InfillChunk], fim: FimTokens, tokenize: Tokenize) -> list[int]:
    """The repository line, each chunk with its file line (or snippet line), and the current
    file's line."""
    out: list[int] = []
    if fim.repo is not None:
        out += [fim.repo, *tokenize(PROJECT_LINE)]
    for chunk in chunks:
        if fim.separator is not None:
            out += [fim.separator, *tokenize((chunk.filename or DEFAULT_FILENAME) + "\n")]
        else:
            out += tokenize(SNIPPET_LINE)
        if chunk.text:
            out += tokenize(chunk.text)
    if fim.separator is not None:
        out += [fim.separator, *tokenize(CURRENT_FILE_LINE)]
    return out


def check_infill(infill: Infill) -> None:
    """At most MAX_INFILL_CHUNKS chunks of extra context, each file name one line of at most
    MAX_FILENAME_BYTES bytes. (The texts' total size is checked with the request's other text:
    infill_texts.)"""
    if len(infill.extra) > MAX_INFILL_CHUNKS:
        raise invalid(
            f"{len(infill.extra)} chunks of extra context given; at most {MAX_INFILL_CHUNKS}",
            "infill.extra",
        )
    for index, chunk in enumerate(infill.extra):
        param = f"infill.extra[{index}].filename"
        name = chunk.filename
        if len(name) > MAX_FILENAME_BYTES or len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
            raise invalid(f"{param} is longer than {MAX_FILENAME_BYTES} bytes", param)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise invalid(f"{param} must be one line without control characters", param)


def infill_texts(infill: Infill) -> Iterator[str]:
    """Every client text of an infill input, for the request's size limit."""
    yield infill.prefix
    yield infill.suffix
    yield infill.prompt
    for chunk in infill.extra:
        yield chunk.filename
        yield chunk.text
