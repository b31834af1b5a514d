"""The images of one request: counted, checked against the model, and loaded by URL scheme."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llamagrid.gateway.errors import invalid_request
from llamagrid.gateway.images.fetch import fetch
from llamagrid.gateway.images.files import read_file
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.images.policy import ImagePolicy, decode_base64, decode_data_url, shown


@dataclass(frozen=True)
class ImageRef:
    """An image a request refers to: its URL (or bare base64) and the field that holds it."""

    source: str
    param: str


class ImageLoader:
    """Loads a request's images under the operator's policy (app.state.images)."""

    def __init__(self, policy: ImagePolicy) -> None:
        self.policy = policy

    def check(self, refs: Sequence[ImageRef], model: str, vision: bool | None) -> None:
        """Before anything is loaded: the count, and whether the model reads images at all
        (``vision`` None: no worker of the model is known yet, and the worker will judge)."""
        if not refs:
            return
        if vision is False:
            raise invalid_request(
                f"The model '{model}' does not read images: its workers were started without a "
                "vision projector (--mmproj).",
                refs[0].param,
                code="model_not_multimodal",
            )
        limit = self.policy.max_images
        if len(refs) > limit:
            raise invalid_request(
                f"The request has {len(refs)} images; at most {limit} are allowed.",
                refs[limit].param,
            )

    async def load_urls(
        self, refs: Sequence[ImageRef], model: str, vision: bool | None
    ) -> list[LoadedImage]:
        """The images at these URLs, in order (the first failure is the answer)."""
        self.check(refs, model, vision)
        return [await self.load_url(ref.source, ref.param) for ref in refs]

    async def load_base64(
        self, refs: Sequence[ImageRef], model: str, vision: bool | None
    ) -> list[LoadedImage]:
        """Images given as bare base64 (their type left to the worker to detect), in order."""
        self.check(refs, model, vision)
        cap = self.policy.max_bytes
        return [LoadedImage(await decode_base64(ref.source, cap, ref.param), "") for ref in refs]

    async def load_url(self, url: str, param: str) -> LoadedImage:
        """One image by its URL: data:, http(s):// (when allowed) or file:// (when allowed)."""
        scheme = url.partition(":")[0].lower() if ":" in url else ""
        if scheme == "data":
            return await decode_data_url(url, self.policy.max_bytes, param)
        if scheme in ("http", "https"):
            return await fetch(url, self.policy, param)
        if scheme == "file":
            return await read_file(url, self.policy.file_dir, self.policy.max_bytes, param)
        raise invalid_request(
            f"The image URL {shown(url)} is not a data:, http(s):// or file:// URL.", param
        )
