"""Formatting shared by every section of the report: numbers, tables, ratios against targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def num(v: float | None, digits: int = 1) -> str:
    """A number with `digits` decimals, or '-' when missing."""
    return "-" if v is None else f"{v:.{digits}f}"


def tok_s_cell(tok_s: float, errors: int, foreign_cpu_pct: float, busy_pct: float) -> str:
    """A tok/s cell: the errors behind it, and '!' when other processes used the CPU."""
    cell = num(tok_s) + (f" ({errors} errors)" if errors else "")
    return cell + (" !" if foreign_cpu_pct > busy_pct else "")


def div(a: float | None, b: float | None) -> float | None:
    """a / b, or None when a side is missing or b is 0."""
    return None if a is None or b is None or b == 0 else a / b


def text_grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub Markdown table, aligned like text_grid."""
    head = "| " + " | ".join(headers) + " |"
    align = "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([head, align, *body])


@dataclass
class Ratio:
    """One of our numbers divided by another, against its target."""

    label: str
    value: float | None
    op: str = ""
    #: None for a ratio that is only informative.
    target: float | None = None

    @property
    def verdict(self) -> str:
        """PASS, FAIL, info, or n/a (a side is missing)."""
        if self.value is None:
            return "n/a"
        if self.target is None:
            return "info"
        ok = self.value >= self.target if self.op == ">=" else self.value <= self.target
        return "PASS" if ok else "FAIL"


def ratio_lines(rs: list[Ratio]) -> list[str]:
    """One line per ratio."""
    return [
        f"{r.label}: {num(r.value, 3)}"
        + ("" if r.target is None else f" (target {r.op} {r.target})")
        + f" {r.verdict}"
        for r in rs
    ]
