"""The one file of a `multipart/form-data` body, taken out as the body streams past (spec §0.2
uploads: PVC's CLI sends the image as a part named `file`).

`MultipartFile.feed(chunk)` returns the part's bytes found so far; it holds back only as many
bytes as the closing delimiter is long, so whatever the file's size, a few hundred bytes are
kept. The body must hold exactly one part, and that part must be a file (its
`Content-Disposition` names a `filename`); anything else is InvalidValue. Pure: no I/O.
"""

from __future__ import annotations

import re

from pvcd.domain.errors import InvalidValue

MAX_HEADERS = 16 * 1024  # bytes of a part's headers at most
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)


def multipart_boundary(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` content type; None for another type;
    InvalidValue for a multipart type without a valid boundary."""
    if not content_type.lower().startswith("multipart/"):
        return None
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidValue(f"a multipart body must be multipart/form-data, not "
                           f"{content_type[:60]!r}")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise InvalidValue("the multipart/form-data body has no valid boundary (1-70 "
                           "characters) in its Content-Type")
    return (match.group(1) or match.group(2)).encode("latin-1")


class MultipartFile:
    """The file part of a streaming multipart body (module docstring)."""

    def __init__(self, boundary: bytes) -> None:
        self.opening = b"--" + boundary
        self.delimiter = b"\r\n--" + boundary
        self.state = "preamble"  # -> headers -> data -> after
        self.buffer = b"\r\n"  # the first delimiter may start the body without a CRLF

    def feed(self, chunk: bytes) -> bytes:
        """The file's bytes in `chunk` (and what was held back before it)."""
        self.buffer += chunk
        out = b""
        while True:
            if self.state == "preamble":
                at = self.buffer.find(self.delimiter)
                if at < 0:
                    self.buffer = self.buffer[-len(self.delimiter):]
                    return out
                self.buffer = self.buffer[at + len(self.delimiter):]
                self.state = "headers"
            elif self.state == "headers":
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEADERS:
                        raise InvalidValue("a part's headers are too long")
                    return out
                self._check_headers(self.buffer[:end])
                self.buffer = self.buffer[end + 4:]
                self.state = "data"
            elif self.state == "data":
                at = self.buffer.find(self.delimiter)
                if at < 0:
                    keep = len(self.delimiter)
                    out += self.buffer[:-keep]
                    self.buffer = self.buffer[-keep:]
                    return out
                out += self.buffer[:at]
                self.buffer = self.buffer[at + len(self.delimiter):]
                self.state = "after"
            else:  # after the file part: only the closing `--` (and an epilogue) may follow
                if len(self.buffer) < 2:
                    return out
                if self.buffer[:2] != b"--":
                    raise InvalidValue("the multipart body has more than one part; send the "
                                       "image as its only part")
                self.buffer = b"--"  # the epilogue is ignored
                return out

    def close(self) -> None:
        """The body has ended: InvalidValue unless its file part was complete."""
        if self.state != "after" or self.buffer[:2] != b"--":
            raise InvalidValue("the multipart body ended before the end of its file part")

    def _check_headers(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        disposition = next((line for line in lines
                            if line.lower().startswith("content-disposition:")), "")
        if "filename=" not in disposition.lower():
            raise InvalidValue("the multipart body's part is not a file (its "
                               "Content-Disposition names no filename); send the image as a "
                               "file part, e.g. curl -F file=@image.qcow2")
