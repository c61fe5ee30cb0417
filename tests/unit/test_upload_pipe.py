"""The upload pipe (pvcd.upload_pipe): bytes arrive in order, a full pipe holds the producer
back until the reader takes bytes out, an abort fails the reader, a closed reader drops the
rest, and a tar archive can be read from it as a stream."""

from __future__ import annotations

import asyncio
import io
import tarfile
import threading

import pytest

from pvcd.upload_pipe import PipeReader, UploadBroken, UploadPipe, UploadPipes


def test_a_full_pipe_holds_the_producer_until_the_reader_takes_bytes() -> None:
    async def scenario() -> bytes:
        pipe = UploadPipe(capacity=8)
        assert pipe.write(b"1234") is None
        waiting = pipe.write(b"5678")  # full now: the producer must wait
        assert waiting is not None and not waiting.done()
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(pipe.read(6)))
        reader.start()
        await asyncio.wait_for(waiting, 5)  # released once it is half empty
        reader.join(5)
        pipe.write(b"9")
        pipe.finish()
        return got[0] + pipe.read() + pipe.read()

    assert asyncio.run(scenario()) == b"123456789"


def test_an_abort_fails_a_waiting_reader_with_its_reason() -> None:
    pipe = UploadPipe()
    failures: list[str] = []

    def read() -> None:
        try:
            pipe.read(10)
        except UploadBroken as exc:
            failures.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    pipe.abort("the client went away after 3 of 10 bytes")
    reader.join(5)
    assert failures == ["the client went away after 3 of 10 bytes"]


def test_a_stopped_reader_gives_up() -> None:
    with pytest.raises(UploadBroken, match="stopped"):
        UploadPipe().read(1, stopped=lambda: True)


def test_a_closed_reader_drops_what_comes_and_never_holds_the_producer() -> None:
    async def scenario() -> UploadPipe:
        pipe = UploadPipe(capacity=4)
        pipe.close_reader("the task failed")
        for _ in range(10):
            assert pipe.write(b"abcdef") is None
        return pipe

    pipe = asyncio.run(scenario())
    assert pipe.received == 60


def test_tarfile_reads_a_stream_from_the_pipe() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in (("a.ovf", b"<x/>"), ("d.vmdk", bytes(range(256)) * 100)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    body = out.getvalue()
    pipe = UploadPipe(capacity=1 << 30)

    async def feed() -> None:
        for start in range(0, len(body), 777):
            pipe.write(body[start:start + 777])
        pipe.finish()

    asyncio.run(feed())
    with tarfile.open(fileobj=PipeReader(pipe, lambda: False), mode="r|") as archive:
        names = []
        for member in archive:
            handle = archive.extractfile(member)
            assert handle is not None
            names.append((member.name, len(handle.read())))
    assert names == [("a.ovf", 4), ("d.vmdk", 25600)]


def test_the_registry_hands_a_pipe_to_its_task() -> None:
    pipes, pipe = UploadPipes(), UploadPipe()
    pipes.open("t1", pipe)
    assert pipes.take("t1") is pipe and pipes.take("t2") is None
    pipes.discard("t1")
    assert pipes.take("t1") is None
