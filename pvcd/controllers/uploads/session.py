"""The link between an upload's HTTP request and its job: the body in, "you may answer" out.

The request's handler runs on the API's event loop and receives the body in chunks; the job
runs in a thread of its own and writes them into Ceph. The body goes through an `UploadPipe`
(`pvcd.upload_pipe`, shared with the OVA upload): bounded in bytes, it makes the handler wait
before it reads more from the socket while the job is behind (backpressure), so the API process
holds at most its capacity of any body. A job that fails early closes the pipe's reading end:
the handler then reads the body to its end quickly (HTTP clients seldom read an answer sent
before their body is out) and answers with the failure.

`UploadSession` adds what an upload's request needs beyond the pipe: `settled`, which resolves
(on the loop) once the job has finished, or has the body and goes on to convert it, the moment
the handler may answer; and `refuse`, for a body that cannot be used (a malformed multipart
body), which fails the task as an invalid value rather than as a client that left.

Race named: `settled` is completed through `call_soon_threadsafe`, never from the job's thread.
"""

from __future__ import annotations

import asyncio

from pvcd.upload_pipe import UploadPipe


class UploadSession:
    """See the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pipe: UploadPipe) -> None:
        self.loop = loop
        self.pipe = pipe
        self.refusal: str | None = None  # why the body was refused, if it was
        self.settled: asyncio.Future[None] = loop.create_future()

    def refuse(self, reason: str) -> None:
        """The body cannot be used: the job fails with `reason` (InvalidValue). The first
        reason stands (a malformed body usually has more than one thing wrong)."""
        if self.refusal is None:
            self.refusal = reason
            self.pipe.abort(reason)

    def settle(self) -> None:
        """The handler may answer now (called from the job's thread)."""
        def done() -> None:
            if not self.settled.done():
                self.settled.set_result(None)

        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop is closed (the API stopped): nobody waits any more
            pass
