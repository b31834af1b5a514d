"""CORS: which browser pages on other origins may call the gateway (--cors-origin).

Off unless origins are given; ``*`` (every origin) only when given explicitly. Credentials
(cookies, TLS client certificates) are never allowed: a browser page authenticates as any other
client does, with its API key in the Authorization header, and a page of an origin that is not
listed gets no CORS headers, so the browser keeps the response from it.

The middleware sits outside every other one, so that a preflight (an OPTIONS request, which
carries no API key) is answered before the key check, and so that the errors the key check and
the body limit answer (401, 413) carry the CORS headers a page needs to read them.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

#: The request headers a page may send: the API key, the JSON body's type, the session key of
#: session_affinity, and what the OpenAI SDKs (Stainless-generated, in JavaScript as in Python)
#: add to every request.
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "X-Session-ID",
    "OpenAI-Organization",
    "OpenAI-Project",
    "X-Stainless-Arch",
    "X-Stainless-Async",
    "X-Stainless-Lang",
    "X-Stainless-OS",
    "X-Stainless-Package-Version",
    "X-Stainless-Read-Timeout",
    "X-Stainless-Retry-Count",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Timeout",
)
#: The response headers a page may read besides the CORS-safelisted ones: where the request
#: went, the session a reply used, and when to retry after a 429 or 503.
EXPOSED_HEADERS = (
    "X-Llamagrid-Worker",
    "X-Llamagrid-Route",
    "X-Llamagrid-Attempts",
    "X-Llamagrid-Session-ID",
    "Retry-After",
)
#: Every method a route of the gateway answers.
ALLOWED_METHODS = ("GET", "POST", "DELETE")
#: How long a browser may cache a preflight's answer, in seconds.
PREFLIGHT_MAX_AGE_S = 600


def install_cors(app: FastAPI, origins: Sequence[str]) -> None:
    """Answer CORS for ``origins`` (nothing when there are none). Call after every other
    ``add_middleware``: the last one added is the outermost."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=list(ALLOWED_METHODS),
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        allow_credentials=False,
        max_age=PREFLIGHT_MAX_AGE_S,
    )
