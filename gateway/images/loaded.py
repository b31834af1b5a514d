"""An image as the gateway passes it on (no gRPC here: request schemas hold it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadedImage:
    """An encoded image and its media type ("" when the client did not say)."""

    data: bytes
    mime_type: str
