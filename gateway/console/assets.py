"""The console's static files (``static/``), read once and served from memory.

Only the files shipped in ``static/`` are served, by exact name: no path from a request ever
reaches the file system. Every answer carries a strict Content-Security-Policy (scripts and
styles only from the gateway's own origin, nothing inline, no frames, no plugins), ``nosniff``,
no referrer, and ``Cache-Control: no-cache`` with a strong ETag: the browser revalidates each
file, so a new gateway version never runs with a stale script, and a 304 costs a few bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

#: The folder, inside the package, that holds the files.
STATIC = "static"
#: The page served at ``/``.
INDEX = "index.html"
#: The content type of each kind of file served.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: Everything from the gateway's origin only; no inline script or style, no eval, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    """One file: its bytes, content type and ETag."""

    body: bytes
    media_type: str
    etag: str

    def response(self, request: Request) -> Response:
        """The file, or a 304 when the browser's copy is this one."""
        headers = {**SECURITY_HEADERS, "ETag": self.etag}
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def load_assets() -> dict[str, Asset]:
    """Every file of ``static/`` whose kind is served, by name."""
    folder = resources.files(__package__ or "llamagrid.gateway.console") / STATIC
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[entry.name] = Asset(body, MEDIA_TYPES[suffix], etag)
    if INDEX not in assets:
        raise RuntimeError(f"the console's {STATIC}/{INDEX} is missing from the installation")
    return assets
