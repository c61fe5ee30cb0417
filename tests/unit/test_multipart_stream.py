"""The streaming decoder of a one-file multipart body (pvcd.api.multipart): the file's bytes
come out whole however the body is cut into chunks; bodies that are not one file part are
refused with the reason."""

from __future__ import annotations

import os

import pytest

from pvcd.api.multipart import SinglePartDecoder, multipart_boundary
from pvcd.domain.errors import InvalidValue

BOUNDARY = b"xYzZY-boundary"


def body(data: bytes, parts: int = 1, filename: bool = True) -> bytes:
    disposition = b'form-data; name="file"' + (b'; filename="a.ova"' if filename else b"")
    part = (b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition +
            b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"preamble\r\n" + part * parts + b"--" + BOUNDARY + b"--\r\nepilogue"


def decode(raw: bytes, step: int) -> bytes:
    decoder = SinglePartDecoder(BOUNDARY)
    out = b"".join(decoder.feed(raw[i:i + step]) for i in range(0, len(raw), step))
    decoder.finish()
    assert decoder.file_bytes == len(out)
    return out


@pytest.mark.parametrize("step", [1, 2, 7, 17, 64, 1000, 1 << 20])
def test_the_file_comes_out_whole_whatever_the_chunks(step: int) -> None:
    # data that holds the delimiter's beginnings: only the full delimiter ends it
    data = os.urandom(3000) + b"\r\n--xYzZY" + b"\r\n--" + os.urandom(100)
    assert decode(body(data), step) == data
    assert decode(body(b""), step) == b""


def test_bodies_that_are_not_one_file_part_are_refused() -> None:
    with pytest.raises(InvalidValue, match="more than one part"):
        decode(body(b"abc", parts=2), 5)
    with pytest.raises(InvalidValue, match="not a file"):
        decode(body(b"abc", filename=False), 5)
    with pytest.raises(InvalidValue, match="ended before its closing boundary"):
        decode(body(b"abcdef")[:-30], 5)
    with pytest.raises(InvalidValue, match="no part within"):
        SinglePartDecoder(BOUNDARY).feed(b"x" * 20000)


def test_the_boundary_comes_from_the_content_type() -> None:
    assert multipart_boundary("multipart/form-data; boundary=abc") == b"abc"
    assert multipart_boundary('multipart/form-data; boundary="a b"') == b"a b"
    assert multipart_boundary("application/octet-stream") is None
    with pytest.raises(InvalidValue, match="needs a boundary"):
        multipart_boundary("multipart/form-data")
