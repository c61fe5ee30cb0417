"""Guest console output into buffer lines: the guest is untrusted, its bytes are anything.

Bytes that are not UTF-8 become U+FFFD (a sequence split between two reads is decoded whole);
terminal escape sequences and carriage returns are kept as they are (a reader's terminal
renders them). A line ends at `\\n`. A line longer than MAX_LINE_CHARS is cut there and the rest
of it, up to its newline, is dropped: a guest writing no newline at all costs at most one cut
line of memory. An unfinished line is held back until its newline comes, or given out as it is
once the console has been quiet for a while (`flush_partial`), so a prompt without a newline
("login: ") shows up; what the guest writes after it then starts a new line.
"""

from __future__ import annotations

import codecs

from pvcd.domain.log_tail import MAX_LINE_CHARS


class ConsoleLines:
    """Splits a console's byte stream into lines, in bounded memory."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []
        self._partial_chars = 0
        self._discarding = False  # the current line was cut: drop the rest up to its newline

    @property
    def pending(self) -> bool:
        """An unfinished line is held back."""
        return self._partial_chars > 0

    def feed(self, data: bytes) -> list[str]:
        """The lines `data` completes."""
        text = self._decoder.decode(data)
        out: list[str] = []
        while text:
            end = text.find("\n")
            piece, text = (text, "") if end < 0 else (text[:end], text[end + 1:])
            self._add(piece, out)
            if end >= 0:
                if not self._discarding:
                    out.append("".join(self._partial))
                self._reset_line()
        return out

    def skip(self) -> None:
        """Bytes were skipped (the reader fell behind): drop the line under way and what
        follows up to the next newline, which may be mid-line in the skipped bytes."""
        self._decoder.reset()
        self._reset_line()
        self._discarding = True

    def flush_partial(self) -> list[str]:
        """The unfinished line, given out now (the console went quiet, or the VM left)."""
        if not self._partial_chars:
            return []
        line = "".join(self._partial)
        self._reset_line()
        return [line]

    def _add(self, piece: str, out: list[str]) -> None:
        if self._discarding or not piece:
            return
        room = MAX_LINE_CHARS - self._partial_chars
        self._partial.append(piece[:room])
        self._partial_chars += min(len(piece), room)
        if len(piece) >= room:  # the line is full: give it out cut, drop the rest of it
            out.append("".join(self._partial))
            self._reset_line()
            self._discarding = True

    def _reset_line(self) -> None:
        self._partial.clear()
        self._partial_chars = 0
        self._discarding = False
