"""Request bodies a test hands to httpx."""

from __future__ import annotations

import httpx


class Chunks(httpx.AsyncByteStream):
    """A chunked request body that is not an async generator. The server answers before
    reading it all, and an async generator left unfinished is reported when it is garbage
    collected: in whichever test the collector runs, if the generator sits in a reference
    cycle (it did, in 1 run of 6). httpx wraps any async iterable given as `content` in a
    generator of its own, so this one is handed over as the request's stream."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None
