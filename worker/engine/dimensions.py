"""Truncated embeddings (``dimensions``): which widths a model allows, and the checks.

Keeping the first n components of an embedding gives a meaningful shorter vector only for a
model trained for it (Matryoshka representation learning, as in nomic-embed-text v1.5 or
mxbai-embed-large); for any other model the prefix of a vector is not an embedding of anything.
No GGUF key says whether a model was trained so, so the operator declares it with the worker's
``--embedding-dimensions`` flag, and a request for a width the flag does not allow is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamagrid.worker.engine.errors import invalid, unsupported

#: The ``--embedding-dimensions`` value that allows every width.
ANY = "any"
#: The most widths the flag may list.
MAX_SIZES = 64


@dataclass(frozen=True)
class EmbeddingDimensions:
    """The widths an Embed request may truncate to: none (the default), any, or a list."""

    any: bool = False
    sizes: tuple[int, ...] = ()

    @property
    def allowed(self) -> bool:
        """Whether any truncation is allowed."""
        return self.any or bool(self.sizes)

    @classmethod
    def parse(cls, text: str) -> EmbeddingDimensions:
        """The flag's value: empty (no truncation), ``any``, or widths joined with ','.
        Raises ValueError for anything else."""
        text = text.strip()
        if not text:
            return cls()
        if text.lower() == ANY:
            return cls(any=True)
        sizes: set[int] = set()
        for part in text.split(","):
            part = part.strip()
            if not (part.isascii() and part.isdigit()) or len(part) > 9 or int(part) < 1:
                raise ValueError(
                    f"{part!r} is not a positive width; give widths joined with ',' (such "
                    f"as 64,128,256) or {ANY!r}"
                )
            sizes.add(int(part))
        if len(sizes) > MAX_SIZES:
            raise ValueError(f"more than {MAX_SIZES} widths listed")
        return cls(sizes=tuple(sorted(sizes)))

    def check_model(self, width: int) -> None:
        """Raises ValueError when a listed width exceeds the model's embedding width."""
        too_wide = [size for size in self.sizes if size > width]
        if too_wide:
            raise ValueError(
                f"--embedding-dimensions {too_wide[0]} exceeds the model's embedding width "
                f"({width})"
            )

    def check_request(self, dimensions: int | None, width: int) -> None:
        """Raises EngineError unless a request may ask for ``dimensions`` components of this
        model's vectors (None: the full width, always allowed)."""
        if dimensions is None:
            return
        if dimensions < 1:
            raise invalid(f"dimensions must be at least 1, not {dimensions}", "dimensions")
        if not self.allowed:
            raise unsupported(
                "dimensions cannot be honoured for this model: truncated embeddings are "
                "meaningful only for a model trained for them (Matryoshka), and this worker "
                "does not declare the model so (worker flag --embedding-dimensions)",
                "dimensions",
            )
        if dimensions > width:
            raise invalid(
                f"dimensions {dimensions} exceeds the model's embedding width ({width})",
                "dimensions",
            )
        if not self.any and dimensions not in self.sizes:
            widths = ", ".join(str(size) for size in self.sizes)
            raise invalid(
                f"dimensions {dimensions} is not a width this model was trained for; allowed: "
                f"{widths}",
                "dimensions",
            )
