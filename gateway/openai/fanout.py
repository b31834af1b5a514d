"""Several Generate streams as one: a /v1/completions request with a list of prompts.

Each prompt is a Generate call of its own, run at once (each is routed, admitted and failed
over on its own). The merged stream is admitted once every call is; until then a call's error
is the request's error (an HTTP error: nothing has been sent), and it cancels the other calls.
After that, messages are passed on as they arrive, their choice indexes moved to the response's
(call k's choice j is k * n + j); an error of any call ends the stream, and closing the stream
cancels every call. Each call is read by a task of its own into a small queue, so a client that
reads slowly slows the workers down (they merge tokens), as with one call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence

from llamagrid.gateway.sse import ADMITTED, Admitted
from llamagrid.v1 import inference_pb2 as pb

Message = Admitted | pb.GenerateResponse
#: What a call's reader puts in the queue: a message, the error that ended the call, or None
#: once the call has ended.
_Item = tuple[int, Message | BaseException | None]


async def merged_streams(
    streams: Sequence[AsyncGenerator[Message, None]], n: int
) -> AsyncGenerator[Message, None]:
    """ADMITTED once every stream has been admitted, then every stream's messages, with call k's
    choice indexes moved by k * n. Closing it closes every stream."""
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=2 * len(streams))
    readers = [asyncio.ensure_future(_read(k, s, queue)) for k, s in enumerate(streams)]
    try:
        waiting, running = set(range(len(streams))), len(streams)
        while running:
            k, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            elif isinstance(item, Admitted):
                waiting.discard(k)
                if not waiting:
                    yield ADMITTED
            else:
                _move(item, k * n)
                yield item
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _read(k: int, stream: AsyncGenerator[Message, None], queue: asyncio.Queue[_Item]) -> None:
    """Put call k's messages in the queue; then its error, if it failed; then None."""
    try:
        async with contextlib.aclosing(stream):
            async for message in stream:
                await queue.put((k, message))
    except Exception as exc:  # the merged stream raises it
        await queue.put((k, exc))
    await queue.put((k, None))


def _move(message: pb.GenerateResponse, by: int) -> None:
    """Move a message's choice index by ``by``."""
    if by:
        if message.HasField("chunk"):
            message.chunk.index += by
        else:
            message.final.index += by
