"""Collecting every problem of a fleet config, each with its location, before reporting them."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Sequence

from pydantic import ValidationError

#: A location inside the config document: keys and list indices, e.g. ("models", 1, "n_ctx").
Loc = Sequence[str | int]


class FleetConfigError(ValueError):
    """A fleet config that cannot be used; the message lists every problem with its location."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"{source}: invalid fleet config ({len(self.problems)} problems):\n{lines}"
        )


def format_loc(loc: Loc) -> str:
    """``("models", 1, "n_ctx")`` -> ``models[1].n_ctx``; the empty location is ``(top level)``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` when a known key is close to ``key``, else nothing."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class Problems:
    """An ordered list of located problems (errors) and warnings."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, loc: Loc, message: str) -> None:
        """Record an error at ``loc``."""
        self.errors.append(f"{format_loc(loc)}: {message}")

    def warn(self, loc: Loc, message: str) -> None:
        """Record a warning at ``loc``."""
        self.warnings.append(f"{format_loc(loc)}: {message}")

    def unknown_key(
        self, loc: Loc, key: str, known: Collection[str], what: str = "setting"
    ) -> None:
        """An unknown key, with the closest known one as a suggestion."""
        self.error([*loc, key], f"unknown {what}{suggest(key, known)}")

    def pydantic(self, loc: Loc, exc: ValidationError, known: Collection[str]) -> None:
        """Every error of a pydantic validation of the mapping found at ``loc``."""
        for err in exc.errors():
            where = [*loc, *err["loc"]]
            if err["type"] == "extra_forbidden":
                self.unknown_key(loc, str(err["loc"][-1]), known)
                continue
            message = "required" if err["type"] == "missing" else err["msg"]
            if err["type"].endswith(("_type", "_parsing")) or err["type"] == "literal_error":
                message += f" (got {err['input']!r})"
            self.error(where, message)

    def raise_if_any(self, source: str) -> None:
        """Raise FleetConfigError listing every recorded error, if there is one."""
        if self.errors:
            raise FleetConfigError(source, self.errors)
