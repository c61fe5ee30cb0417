"""The one file of a `multipart/form-data` upload body, decoded as it streams (spec §0.2
"uploads": PVC's CLI sends the file as one form part named `file`).

Tornado's own multipart parser wants the whole body in memory; an upload's body may be many
gigabytes. `SinglePartDecoder.feed(chunk)` returns the file's bytes found in each chunk and
holds back only what could be the start of the closing delimiter (the boundary's length). The
body must have exactly one part, with a `filename` (a file part); the preamble and part headers
are bounded (`MAX_HEAD`), the epilogue is ignored. A body that breaks these rules raises
`InvalidValue` saying what was wrong.
"""

from __future__ import annotations

import re

from pvcd.domain.errors import InvalidValue

MAX_HEAD = 16 * 1024  # bytes of preamble plus part headers
OVERHEAD = 64 * 1024  # what a multipart body may add to its file's size
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^;\s]{1,70}))', re.IGNORECASE)


def multipart_boundary(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` content type; None for another type;
    InvalidValue for a multipart type without a usable boundary."""
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return None
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise InvalidValue("a multipart/form-data body needs a boundary (1-70 characters) in "
                           "its Content-Type")
    return (match.group(1) or match.group(2)).encode("latin-1")


class SinglePartDecoder:
    """Streams the data of the single file part of a multipart body (module docstring)."""

    def __init__(self, boundary: bytes) -> None:
        self._opening = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._buffer = b""
        self._state = "head"  # head → data → after → done
        self.file_bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        """The file's bytes in `chunk` (perhaps with some held back from the last one)."""
        self._buffer += chunk
        if self._state == "head":
            self._read_head()
        if self._state == "data":
            return self._read_data()
        if self._state == "after":
            self._read_after()
        if self._state == "done":
            self._buffer = b""  # the epilogue
        return b""

    def finish(self) -> None:
        """The body has ended: InvalidValue unless the part was closed properly."""
        if self._state != "done":
            raise InvalidValue("the multipart body ended before its closing boundary")

    def _read_head(self) -> None:
        start = self._buffer.find(self._opening)
        end = self._buffer.find(b"\r\n\r\n", start + len(self._opening)) if start >= 0 else -1
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise InvalidValue(f"the multipart body has no part within its first {MAX_HEAD} "
                                   "bytes")
            return
        if start > 0 and self._buffer[start - 2:start] != b"\r\n":
            raise InvalidValue("the multipart body's boundary does not start a line")
        headers = self._buffer[start + len(self._opening):end].decode("latin-1").lower()
        if "filename=" not in headers:
            raise InvalidValue("the multipart body's part is not a file (no filename in its "
                               "Content-Disposition); send the file as the only part")
        self._buffer = self._buffer[end + 4:]
        self._state = "data"

    def _read_data(self) -> bytes:
        found = self._buffer.find(self._delimiter)
        if found >= 0:
            data, self._buffer = self._buffer[:found], self._buffer[found + len(self._delimiter):]
            self._state = "after"
            self._read_after()
        else:
            keep = len(self._delimiter) - 1  # may be the start of the delimiter
            cut = max(0, len(self._buffer) - keep)
            data, self._buffer = self._buffer[:cut], self._buffer[cut:]
        self.file_bytes += len(data)
        return data

    def _read_after(self) -> None:
        if len(self._buffer) < 2:
            return
        if self._buffer[:2] != b"--":
            raise InvalidValue("the multipart body has more than one part; send the file as "
                               "its only part")
        self._state = "done"
