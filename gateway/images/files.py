"""Reading an image from a ``file://`` URL, only inside the operator's --image-file-dir.

``file:///dir/sub/cat.png`` (or ``file://localhost/...``) names an absolute path. It is read only
when the path, with every symbolic link resolved, lies inside the directory, when it names no
``..`` segment, and when it is a regular file of at most the byte cap; the file is opened
without following a final symbolic link and checked again once open (its type and size), so
that what is read is what was checked. The read runs off the event loop.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from llamagrid.gateway.errors import OpenAIError, invalid_request
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.images.policy import shown, too_large


def file_refused(url: str, why: str, param: str) -> OpenAIError:
    """The 400 for a file:// URL the gateway will not read."""
    return invalid_request(f"The image URL {shown(url)} is not read: {why}", param)


async def read_file(url: str, directory: str, max_bytes: int, param: str) -> LoadedImage:
    """The image a file:// URL names, read from inside ``directory``."""
    if not directory:
        raise file_refused(
            url,
            "file:// URLs are off on this gateway (the operator can allow a directory with "
            "--image-file-dir).",
            param,
        )
    path = _path(url, param)
    data = await asyncio.to_thread(_read_inside, path, Path(directory), max_bytes, url, param)
    mime, _ = mimetypes.guess_type(path.name)
    return LoadedImage(data, mime if mime is not None and mime.startswith("image/") else "")


def _path(url: str, param: str) -> Path:
    """The absolute path a file:// URL names, without any '..' segment."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise file_refused(url, "a file:// URL names no host (file:///path).", param)
    if parts.query or parts.fragment:
        raise file_refused(url, "a file:// URL has no query or fragment.", param)
    try:
        raw = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise file_refused(url, "the path is not valid UTF-8.", param) from None
    if "\0" in raw or not raw.startswith("/"):
        raise file_refused(url, "the path must be absolute.", param)
    if ".." in raw.split("/"):
        raise file_refused(url, "the path may not contain '..'.", param)
    return Path(raw)


def _read_inside(path: Path, directory: Path, max_bytes: int, url: str, param: str) -> bytes:
    """The bytes of ``path`` if, resolved, it is a regular file inside ``directory``."""
    try:
        root = directory.resolve(strict=True)
    except OSError:
        raise file_refused(url, "the gateway's image directory is not available.", param) from None
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise file_refused(url, "it is outside the directory images may be read from.", param)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError:
        raise file_refused(url, "there is no such readable file.", param) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise file_refused(url, "it is not a regular file.", param)
        if info.st_size > max_bytes:
            raise too_large(f"The file {shown(url)}", max_bytes, param)
        if info.st_size == 0:
            raise file_refused(url, "the file is empty.", param)
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise too_large(f"The file {shown(url)}", max_bytes, param)
    return data
