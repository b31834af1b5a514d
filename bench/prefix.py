"""The prefix-cache point: a long shared system prompt, asked twice with different questions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.config import PREFIX_MAX_TOKENS, Config
from bench.load import Stream, open_sender, percentile
from bench.targets import Server

_COMPANIES = ("Acme Tools", "Blue Harbor Bank", "Cedar Health", "Delta Freight", "Echo Games")
_TOPICS = ("refunds", "shipping", "passwords", "invoices", "warranties", "accessibility")
_QUESTIONS = (
    "How do I reset my password?",
    "Can I return an opened item?",
)


@dataclass
class PrefixResult:
    """TTFT of a cold prompt and of a second prompt sharing its long prefix."""

    target: str
    trials: int
    prompt_tokens: int | None
    first_ttft_ms: float | None
    second_ttft_ms: float | None
    #: Median of the per-trial second/first ratios.
    ratio: float | None
    second_cached_tokens: int | None
    errors: list[str]


def _raw_prefix(trial: int) -> str:
    company = _COMPANIES[trial % len(_COMPANIES)]
    lines = [f"You are support agent number {trial + 1} of {company}. Follow these rules."]
    for i in range(200):
        topic = _TOPICS[(i + trial) % len(_TOPICS)]
        lines.append(
            f"Rule {i + 1}: when a customer asks about {topic}, answer politely in two "
            f"sentences and cite section {i + 7}.{trial + 1} of the {company} handbook."
        )
    return "\n".join(lines)


def truncate_to_tokens(model: Path, texts: list[str], tokens: int) -> list[str]:
    """Each text cut to its first `tokens` tokens of the model's tokenizer."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        out = []
        for text in texts:
            ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
            out.append(vocab.detokenize(ids[:tokens]).decode("utf-8", errors="ignore"))
        return out
    finally:
        vocab.close()


def build_prefixes(model: Path, tokens: int, trials: int) -> list[str]:
    """`trials` distinct system prompts of about `tokens` tokens each (model's tokenizer)."""
    return truncate_to_tokens(model, [_raw_prefix(t) for t in range(trials)], tokens)


def _ms(s: Stream) -> float | None:
    t = s.ttft
    return None if t is None else t * 1000


async def run_prefix(server: Server, cfg: Config, prefixes: list[str]) -> PrefixResult:
    """For each prefix: one cold request, then one with the same prefix and another question."""
    firsts: list[float] = []
    seconds: list[float] = []
    ratios: list[float] = []
    errors: list[str] = []
    prompt_tokens: int | None = None
    cached: int | None = None
    async with open_sender(server, 1) as send:
        for prefix in prefixes:
            pair = [
                await send([("system", prefix), ("user", q)], PREFIX_MAX_TOKENS) for q in _QUESTIONS
            ]
            a, b = _ms(pair[0]), _ms(pair[1])
            errors += [s.error for s in pair if s.error]
            if a is None or b is None:
                continue
            firsts.append(a)
            seconds.append(b)
            ratios.append(b / a)
            prompt_tokens = pair[0].prompt_tokens
            cached = pair[1].cached_tokens
    return PrefixResult(
        target=server.name,
        trials=len(prefixes),
        prompt_tokens=prompt_tokens,
        first_ttft_ms=percentile(firsts, 50),
        second_ttft_ms=percentile(seconds, 50),
        ratio=percentile(ratios, 50),
        second_cached_tokens=cached,
        errors=errors,
    )
