"""The `limit` filter of the list endpoints: a regular expression from the request, matched with
bounded work.

Python's `re` backtracks: `(a+)+$` against a name of thirty `a`s and a `!` takes minutes, and
it holds the GIL while it matches, so one GET froze the whole daemon, keepalive included (the
primary was then declared dead). `limit` therefore runs in RE2 (google-re2), which never
backtracks: matching is linear in the name's length. Three bounds keep a request's work small:

- the pattern is at most `MAX_PATTERN_LENGTH` characters;
- its compiled program may use at most `MAX_PROGRAM_BYTES` (RE2's `max_mem`), so a pattern
  that is cheap to write but huge once compiled, like `(.*){1000}`, is refused as too complex
  instead of costing milliseconds on every name;
- one request's matching has a time budget (`MATCH_BUDGET`, measured with the clock given):
  past it the request fails, whatever the number of names.

A refused pattern is `InvalidValue` (a 510) saying why. RE2's syntax is Python's for everything
a name filter needs (classes, anchors, alternation, repetition, `(?i)`); backreferences and
lookaround are refused, since they cannot be matched without backtracking.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import re2

from pvcd.domain.errors import InvalidValue

MAX_PATTERN_LENGTH = 256
MAX_PROGRAM_BYTES = 64 * 1024
MATCH_BUDGET = 0.25  # seconds of matching per request


class NameFilter:
    """A compiled `limit`; `search(name)` is True when the expression occurs in `name`."""

    def __init__(self, pattern: str, name: str = "limit",
                 clock: Callable[[], float] = time.monotonic,
                 budget: float = MATCH_BUDGET) -> None:
        self.pattern = pattern
        self.name = name
        self._clock = clock
        self._budget = budget
        self._spent = 0.0
        self._regexp = _compile(pattern, name)

    def search(self, text: str) -> bool:
        started = self._clock()
        try:
            found = self._regexp.search(text) is not None
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, so nothing to match
            found = False
        self._spent += self._clock() - started
        if self._spent > self._budget:
            raise InvalidValue(f"{self.name} '{self.pattern}' took more than {self._budget:g} s "
                               "to match: use a simpler expression")
        return found


def _compile(pattern: str, name: str) -> re2._Regexp:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidValue(f"{name} is {len(pattern)} characters long: a regular expression "
                           f"of at most {MAX_PATTERN_LENGTH} characters is allowed")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        return re2.compile(pattern, options)
    except UnicodeEncodeError:
        raise InvalidValue(f"{name} {pattern!r} is not valid text") from None
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and \
            isinstance(exc.args[0], bytes) else str(exc)
        if "pattern too large" in reason:
            raise InvalidValue(f"{name} '{pattern}' is too complex: its compiled form needs "
                               f"more than {MAX_PROGRAM_BYTES // 1024} KiB; use a simpler "
                               "expression") from None
        raise InvalidValue(f"{name} '{pattern}' is not a valid regular expression: {reason} "
                           "(RE2 syntax: no backreferences or lookaround)") from None
