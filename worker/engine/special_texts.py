"""Special-token text in client strings: finding it (SpecialTokens) and swapping it for
placeholders and back (Escaper), for engine/prompts.py's tokenizing of chat messages."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

from llamagrid.worker.engine.errors import invalid

#: Characters a placeholder may be delimited with: the first that no special token contains.
_DELIMITERS = "#~^`@"


@dataclass(frozen=True)
class SpecialToken:
    """A token llama.cpp matches in text only when parsing special tokens."""

    id: int
    text: str
    #: A control token (BOS, EOS, a turn marker), as opposed to the unknown token.
    control: bool = True
    #: llama.cpp drops the whitespace before it (LSTRIP) or after it (RSTRIP).
    lstrip: bool = False
    rstrip: bool = False


class SpecialTokens:
    """A vocabulary's special tokens, and a matcher for their text."""

    def __init__(self, tokens: Sequence[SpecialToken]) -> None:
        self.by_text: dict[str, SpecialToken] = {}
        for token in tokens:
            if token.text and token.text not in self.by_text:
                self.by_text[token.text] = token
        self.control_ids = frozenset(t.id for t in tokens if t.control)
        #: The texts in a fixed order: a placeholder names its text by index.
        self.texts = tuple(self.by_text)
        self._index = {text: i for i, text in enumerate(self.texts)}
        self.pattern = _trie_pattern(self.texts)
        delimiters = [d for d in _DELIMITERS if not any(d in text for text in self.texts)]
        if not delimiters:
            raise ValueError("every placeholder delimiter occurs in some special token")
        self.delimiter = delimiters[0]

    def find(self, text: str) -> list[tuple[int, int, SpecialToken]]:
        """Every special token written in text: (start, end, token), leftmost-longest."""
        if self.pattern is None:
            return []
        return [(m.start(), m.end(), self.by_text[m.group()]) for m in self.pattern.finditer(text)]

    def index(self, text: str) -> int:
        """The placeholder index of a special token's text."""
        return self._index[text]


#: A trie of characters; the key "" marks the end of a text.
_Trie = dict[str, "_Trie"]


def _trie_pattern(texts: Sequence[str]) -> re.Pattern[str] | None:
    """A regex matching any of texts, longest first, built as a trie so that the work at each
    position of a text grows with the longest token, not with the number of tokens."""
    if not texts:
        return None
    root: _Trie = {}
    for text in texts:
        node = root
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: _Trie) -> str:
        branches = [re.escape(c) + build(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(build(root))


class Escaper:
    """Swaps special-token text in client strings for placeholders, and back.

    A placeholder is ``<d><nonce><d><index><d>``: d is a delimiter no special token contains
    (so no special token can match across a placeholder's edge), the nonce a random number
    that occurs in no client string, and index the special token's place in SpecialTokens.
    """

    def __init__(self, specials: SpecialTokens, strings: Sequence[str | None]) -> None:
        self.specials = specials
        d = specials.delimiter
        while True:
            self.marker = f"{d}{secrets.randbits(64)}{d}"
            if not any(s and self.marker in s for s in strings):
                break
        #: What stands for a message's content in the skeleton rendering.
        self.sentinel = f"{self.marker}c{d}"
        self._placeholder = re.compile(re.escape(self.marker) + r"(\d+)" + re.escape(d))
        #: Whether some client string held special-token text.
        self.escaped = False

    @overload
    def escape(self, text: str) -> str: ...
    @overload
    def escape(self, text: None) -> None: ...
    def escape(self, text: str | None) -> str | None:
        """text with every special token's text replaced by its placeholder."""
        pattern, d = self.specials.pattern, self.specials.delimiter
        if not text or pattern is None:
            return text
        escaped, count = pattern.subn(
            lambda m: f"{self.marker}{self.specials.index(m.group())}{d}", text
        )
        self.escaped = self.escaped or count > 0
        return escaped

    def restore(self, text: str) -> str:
        """text with its placeholders replaced by the text they stand for."""
        texts = self.specials.texts
        try:
            restored = self._placeholder.sub(lambda m: texts[int(m.group(1))], text)
        except IndexError:
            restored = self.marker  # a placeholder the template changed: refused below
        if self.marker in restored:
            raise invalid(
                "the chat template alters message text that holds special-token text: these "
                "messages cannot be tokenized safely",
                "messages",
            )
        return restored
