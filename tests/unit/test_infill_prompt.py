"""Fill-in-the-middle prompts at the token level (engine/infill.py), their budget and trimming,
and the validation of infill inputs (engine/validation.py).

The vocabulary is a stand-in: every character is one token (1000 + its code point), so the
ids show exactly which text went where; the FIM tokens have small ids of their own.
"""

from __future__ import annotations

import dataclasses

import pytest

from llamagrid.worker.engine.chat_template import ChatTemplate
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.infill import (
    MAX_FILENAME_BYTES,
    MAX_INFILL_CHUNKS,
    NO_FIM,
    FimTokens,
    budget,
    infill_tokens,
)
from llamagrid.worker.engine.limits import RequestLimits
from llamagrid.worker.engine.prompts import PromptTokenizer
from llamagrid.worker.engine.requests import (
    GenerationSpec,
    Infill,
    InfillChunk,
    Sampling,
    SessionRef,
)
from llamagrid.worker.engine.special_texts import SpecialToken, SpecialTokens
from llamagrid.worker.engine.validation import check_generation

BOS, PRE, SUF, MID, REP, SEP = 1, 2, 3, 4, 5, 6
FIM = FimTokens(PRE, SUF, MID, REP, SEP)
#: FIM tokens without the repository and file-separator tokens.
FIM_ONLY = FimTokens(PRE, SUF, MID)
#: The special token a client may write as text: "<pre>" is PRE only when parsing specials.
PRE_TEXT = "<pre>"


def chars(text: str) -> list[int]:
    """The stand-in tokenization: one token per character."""
    return [1000 + ord(c) for c in text]


def build(
    infill: Infill,
    fim: FimTokens | None = FIM,
    bos: int | None = BOS,
    n_batch: int = 512,
    n_ctx: int = 4096,
    n_predict: int = 16,
) -> list[int]:
    return infill_tokens(infill, fim, chars, bos, n_batch, n_ctx, n_predict)


# The layout.
def test_the_repo_level_layout_puts_extra_files_before_bos_and_the_prefix() -> None:
    infill = Infill(
        prefix="def f(",
        suffix=")\n",
        extra=(InfillChunk("util.py", "x = 1"), InfillChunk("", "y")),
        prompt="a",
    )
    expected = [
        *[REP, *chars("myproject\n")],
        *[SEP, *chars("util.py\n"), *chars("x = 1")],
        *[SEP, *chars("tmp\n"), *chars("y")],
        *[SEP, *chars("filename\n")],
        *[BOS, PRE, *chars("def f("), *chars("a")],
        *[SUF, *chars(")\n")],
        MID,
    ]
    assert build(infill) == expected


def test_without_a_repository_token_there_is_no_project_line() -> None:
    fim = FimTokens(PRE, SUF, MID, None, SEP)
    tokens = build(Infill("p", "s", (InfillChunk("a", "t"),)), fim=fim, bos=None)
    assert tokens == [
        SEP,
        *chars("a\nt"),
        SEP,
        *chars("filename\n"),
        PRE,
        *chars("p"),
        SUF,
        1115,
        MID,
    ]


def test_without_a_file_separator_each_chunk_follows_a_snippet_line() -> None:
    fim = FimTokens(PRE, SUF, MID)
    tokens = build(Infill("p", "s", (InfillChunk("a.py", "one"), InfillChunk("b", "two"))), fim=fim)
    snippet = chars("\n\n--- snippet ---\n\n")
    expected = [*snippet, *chars("one"), *snippet, *chars("two"), BOS, PRE, 1112, SUF, 1115, MID]
    assert tokens == expected


def test_an_empty_infill_is_just_the_fim_tokens() -> None:
    assert build(Infill(), fim=FimTokens(PRE, SUF, MID)) == [BOS, PRE, SUF, MID]
    assert build(Infill(), fim=FimTokens(PRE, SUF, MID), bos=None) == [PRE, SUF, MID]


def test_a_model_without_fim_tokens_refuses_infill() -> None:
    with pytest.raises(EngineError) as caught:
        build(Infill("a", "b"), fim=None)
    assert caught.value.reason is Reason.UNSUPPORTED
    assert caught.value.param == "infill" and caught.value.message == NO_FIM


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ((PRE, SUF, MID, -1, -1), FimTokens(PRE, SUF, MID)),
        ((PRE, SUF, MID, REP, SEP), FIM),
        ((-1, SUF, MID, REP, SEP), None),
        ((PRE, -1, MID, -1, -1), None),
        ((PRE, SUF, -1, -1, -1), None),
    ],
)
def test_fim_tokens_need_prefix_suffix_and_middle(
    ids: tuple[int, int, int, int, int], expected: FimTokens | None
) -> None:
    assert FimTokens.of(*ids) == expected


# The budget and the trimming.
def test_the_prefix_keeps_its_last_three_quarters_of_a_batch() -> None:
    prefix = "".join(chr(ord("a") + i % 26) for i in range(100))
    tokens = build(Infill(prefix=prefix), fim=FimTokens(PRE, SUF, MID), bos=None, n_batch=40)
    assert tokens == [PRE, *chars(prefix[-30:]), SUF, MID]


def test_the_suffix_keeps_its_first_quarter_of_a_batch_less_the_prompt_and_two() -> None:
    suffix = "0123456789" * 5
    tokens = build(
        Infill(suffix=suffix, prompt="ab"), fim=FimTokens(PRE, SUF, MID), bos=None, n_batch=40
    )
    # 40 // 4 - (2 + 2 prompt tokens) = 6
    assert tokens == [PRE, *chars("ab"), SUF, *chars(suffix[:6]), MID]


def test_a_long_prompt_leaves_no_room_for_the_suffix_but_is_kept_whole() -> None:
    tokens = build(
        Infill(suffix="xyz", prompt="p" * 20), fim=FimTokens(PRE, SUF, MID), bos=None, n_batch=40
    )
    assert tokens == [PRE, *chars("p" * 20), SUF, MID]


def test_the_extra_context_keeps_its_last_tokens() -> None:
    fim = FimTokens(PRE, SUF, MID)
    chunks = tuple(InfillChunk("f", str(i) * 10) for i in range(10))
    full = build(Infill(extra=chunks), fim=fim, bos=None, n_ctx=100_000)
    # n_ctx - n_batch - 2 * n_predict = 100 - 40 - 2 * 10 = 40 tokens of extra context
    kept = build(Infill(extra=chunks), fim=fim, bos=None, n_batch=40, n_ctx=100, n_predict=10)
    extra = full[: full.index(PRE)]
    assert kept == [*extra[-40:], PRE, SUF, MID]


@pytest.mark.parametrize("n_predict", [0, 1, 7, 50])
@pytest.mark.parametrize("n_ctx", [64, 100, 300])
def test_extra_context_never_takes_the_room_of_the_completion(n_predict: int, n_ctx: int) -> None:
    chunks = tuple(InfillChunk("f.py", "z" * 200) for _ in range(3))
    core = Infill(prefix="a" * 500, suffix="b" * 500, prompt="c")
    fim = FimTokens(PRE, SUF, MID)  # no project or current-file line: only chunks are extra
    without = build(core, fim, n_batch=32, n_ctx=n_ctx, n_predict=n_predict)
    tokens = build(
        dataclasses.replace(core, extra=chunks), fim, n_batch=32, n_ctx=n_ctx, n_predict=n_predict
    )
    assert tokens[len(tokens) - len(without) :] == without  # extra context only goes before
    room = n_ctx - max(1, n_predict)
    assert len(tokens) <= max(room, len(without))
    assert tokens.count(PRE) == tokens.count(SUF) == tokens.count(MID) == 1


def test_the_budget_follows_llama_servers_split() -> None:
    keep = budget(1000, 1000, 3, 1000, n_batch=512, n_ctx=4096, n_predict=100, n_fixed=4)
    assert keep.prefix == 384  # 3/4 of the batch
    assert keep.suffix == 128 - 5  # 1/4 of the batch less the prompt and two
    assert keep.extra == 1000  # 4096 - 512 - 200 leaves room for all of it
    tight = budget(1000, 1000, 3, 5000, n_batch=512, n_ctx=4096, n_predict=100, n_fixed=4)
    assert tight.extra == 4096 - 512 - 200


def test_a_batch_larger_than_the_context_counts_as_the_context() -> None:
    keep = budget(1000, 1000, 0, 0, n_batch=4096, n_ctx=200, n_predict=0, n_fixed=4)
    assert keep.prefix == 150 and keep.suffix == 48


# Special-token text in client text is text.
class CharVocab:
    """A vocabulary whose only special token is "<pre>" (PRE), parsed only when asked."""

    bos_text = ""
    adds_bos = True

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        ids = [BOS] if add_special else []
        if parse_special:
            for i, part in enumerate(text.split(PRE_TEXT)):
                ids += ([PRE] if i else []) + chars(part)
            return ids
        return ids + chars(text)

    def piece(self, token: int, special: bool = False) -> bytes:
        return chr(token - 1000).encode() if token >= 1000 else b""

    def detokenize(self, tokens: list[int], render_special: bool) -> str:
        return "".join(self.piece(t).decode() for t in tokens)


def tokenizer(fim: FimTokens | None = FIM_ONLY) -> PromptTokenizer:
    specials = SpecialTokens([SpecialToken(PRE, PRE_TEXT)])
    template = ChatTemplate("{{ messages[0].content }}", "", "")
    return PromptTokenizer(CharVocab(), template, specials, fim=fim, infill_window=(512, 4096))


def test_special_token_text_in_an_infill_is_tokenized_as_plain_text() -> None:
    spec = GenerationSpec(infill=Infill(prefix=PRE_TEXT, suffix="s"))
    tokens = tokenizer().prompt_tokens(spec)
    assert tokens == [BOS, PRE, *chars(PRE_TEXT), SUF, 1115, MID]


def test_the_prompt_tokenizer_refuses_infill_without_fim_tokens() -> None:
    with pytest.raises(EngineError) as caught:
        tokenizer(fim=None).prompt_tokens(GenerationSpec(infill=Infill("a", "b")))
    assert caught.value.reason is Reason.UNSUPPORTED


# Validation: every limit, and hostile values.
def check(spec: GenerationSpec, limits: RequestLimits | None = None) -> EngineError:
    with pytest.raises(EngineError) as caught:
        check_generation(spec, 50_000, limits or RequestLimits())
    return caught.value


def test_a_valid_infill_passes_validation() -> None:
    chunks = tuple(InfillChunk("é" * 128, "x") for _ in range(MAX_INFILL_CHUNKS))
    check_generation(GenerationSpec(infill=Infill("a", "b", chunks, "c")), 50_000)
    check_generation(GenerationSpec(infill=Infill()), 50_000)


def test_too_many_chunks_are_refused() -> None:
    chunks = tuple(InfillChunk("f", "t") for _ in range(MAX_INFILL_CHUNKS + 1))
    error = check(GenerationSpec(infill=Infill(extra=chunks)))
    assert (error.reason, error.param) == (Reason.INVALID_VALUE, "infill.extra")


@pytest.mark.parametrize(
    "name",
    ["a" * (MAX_FILENAME_BYTES + 1), "é" * (MAX_FILENAME_BYTES // 2 + 1), "x" * 10**7],
)
def test_a_long_filename_is_refused(name: str) -> None:
    chunks = (InfillChunk("ok", ""), InfillChunk(name, "t"))
    error = check(GenerationSpec(infill=Infill(extra=chunks)))
    assert error.param == "infill.extra[1].filename"


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "nul\x00", "tab\t", "del\x7f"])
def test_a_filename_with_control_characters_is_refused(name: str) -> None:
    error = check(GenerationSpec(infill=Infill(extra=(InfillChunk(name, "t"),))))
    assert error.param == "infill.extra[0].filename"


@pytest.mark.parametrize(
    "infill",
    [
        Infill(prefix="a" * 101),
        Infill(suffix="a" * 101),
        Infill(prompt="a" * 101),
        Infill(prefix="a" * 60, suffix="b" * 41),
        Infill(extra=tuple(InfillChunk("f", "t" * 20) for _ in range(6))),
        Infill(extra=(InfillChunk("n" * 60, "t" * 41),)),
    ],
)
def test_the_infill_texts_together_are_held_to_max_prompt_bytes(infill: Infill) -> None:
    error = check(GenerationSpec(infill=infill), RequestLimits(max_prompt_bytes=100))
    assert (error.reason, error.param) == (Reason.INVALID_VALUE, "infill")


def test_infill_excludes_the_other_inputs() -> None:
    for spec in (
        GenerationSpec(infill=Infill("a"), prompt="p"),
        GenerationSpec(infill=Infill("a"), tokens=(1, 2)),
    ):
        assert check(spec).param == "input"


def test_infill_refuses_echo_and_sessions() -> None:
    spec = GenerationSpec(infill=Infill("a", "b"))
    assert check(dataclasses.replace(spec, echo=True)).param == "echo"
    assert check(dataclasses.replace(spec, session=SessionRef("s" * 32))).param == "infill"


def test_infill_keeps_the_sampling_rules() -> None:
    spec = GenerationSpec(infill=Infill("a"), sampling=Sampling(temperature=float("nan")))
    assert check(spec).param == "temperature"
