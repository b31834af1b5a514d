"""API keys and where the gateway may listen: the rules, pure (no web framework).

- **A key** is a bearer token as RFC 6750 spells one: letters, digits and ``-._~+/``, optionally
  ending in ``=``. That covers hex, base64, base64url and ``sk-...`` keys. An empty key is an
  error, never "no authentication". Keys travel as a list, joined with ``,`` (as the
  ``--worker`` flag does) or as a JSON list; a key cannot hold a comma, so nothing is ambiguous.
- **A key file** has one key per line. Blank lines and lines starting with ``#`` are skipped;
  anything else must be a key. A file without a key is an error.
- **Listening.** A gateway on a non-loopback address without a key would let anyone who can
  reach the port use the models: it is refused unless the operator says so explicitly
  (``--allow-insecure-bind``), e.g. behind a proxy that authenticates. The supervisor applies
  the same rule to its workers, which have no authentication at all.

The supervisor imports this module to check its plan, so it must stay free of FastAPI.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

#: RFC 6750 section 2.1, b64token.
KEY_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
KEY_RULE = "letters, digits and -._~+/ only, optionally ending in = (an RFC 6750 bearer token)"


class ApiKeyError(ValueError):
    """A key or a key file that cannot be used; the message never contains a key."""


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a usable API key (the message does not repeat it); None if it is."""
    if not key:
        return "an API key is empty (an empty key never turns authentication off)"
    if not KEY_PATTERN.fullmatch(key):
        return f"an API key must be {KEY_RULE}"
    return None


def split_keys(value: object) -> object:
    """A settings value as a list of keys: a JSON list, or keys joined with ','; a list of such.

    Empty parts stay, so that the key check reports them. Other types pass through unchanged
    (pydantic reports them).
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [text]
    if isinstance(value, list):
        return [part.strip() for item in value for part in str(item).split(",")]
    return value


def check_keys(keys: list[str]) -> list[str]:
    """The keys, or ApiKeyError naming the first bad one by position."""
    for i, key in enumerate(keys):
        problem = key_problem(key)
        if problem:
            where = f"key {i + 1} of {len(keys)}: " if len(keys) > 1 else ""
            raise ApiKeyError(where + problem)
    return keys


def parse_key_file(text: str, source: str) -> list[str]:
    """The keys of a key file's text; ApiKeyError (with file and line) for a bad line."""
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        problem = key_problem(line)
        if problem:
            raise ApiKeyError(f"{source}, line {number}: {problem}")
        keys.append(line)
    if not keys:
        raise ApiKeyError(f"{source}: no API key in the file (one per line; '#' starts a comment)")
    return keys


def read_key_file(path: str) -> list[str]:
    """The keys in the file at ``path``; ApiKeyError if it cannot be read or holds none."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ApiKeyError(f"{path}: cannot read the API key file: {reason}") from None
    return parse_key_file(text, path)


def is_world_readable(path: str) -> bool:
    """Whether every user of the machine may read the file (then it should be chmod 600)."""
    try:
        return bool(Path(path).stat().st_mode & 0o004)
    except OSError:
        return False


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # "", a wildcard spelled otherwise, or a host name: assume reachable
        return False


def gateway_bind_problem(host: str, protected: bool, allowed: bool) -> str | None:
    """Why the gateway may not listen on ``host`` (None: it may).

    ``protected``: requests need a key; ``allowed``: the operator passed --allow-insecure-bind.
    """
    if protected or allowed or is_loopback(host):
        return None
    return (
        f"refusing to serve the gateway on {host or 'every address'} without an API key: "
        "anyone who can reach it could use it. Give a key (--api-key-file, or the "
        "LLAMAGRID_GATEWAY_API_KEY / LLAMAGRID_SERVE_API_KEY environment variable), listen on "
        "127.0.0.1, or pass --allow-insecure-bind if that is what you mean (e.g. behind a "
        "proxy that authenticates)"
    )
