"""List rendering from cached JSON fragments.

An object's JSON fragment (UTF-8 bytes, ready to be sent) is kept together with the cache
entries it was built from ("basis"). Cache entries are immutable and replaced on every change,
so an identity check tells whether a fragment is current; only changed objects are re-encoded,
and a list of 1,000s of objects costs a dict walk and one join instead of building and encoding
every object on every request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

Basis = tuple[Any, ...]


class FragmentRenderer:
    def __init__(self, basis: Callable[[str], Basis],
                 build: Callable[[str], dict[str, Any] | None]) -> None:
        self._basis = basis
        self._build = build
        self._fragments: dict[str, tuple[Basis, bytes]] = {}

    def fragment(self, key: str) -> bytes | None:
        basis = self._basis(key)
        cached = self._fragments.get(key)
        if cached is not None and _same(cached[0], basis):
            return cached[1]
        obj = self._build(key)
        if obj is None:
            self._fragments.pop(key, None)
            return None
        data = json.dumps(obj).encode()
        self._fragments[key] = (basis, data)
        return data

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the fragments of `keys` (objects that are gone)."""
        for key in keys:
            self._fragments.pop(key, None)

    def render(self, keys: Iterable[str]) -> bytes:
        parts = []
        for key in keys:
            data = self.fragment(key)
            if data is not None:
                parts.append(data)
        if len(self._fragments) > 2 * len(parts) + 1024:
            self._fragments.clear()  # objects were deleted; rebuild lazily
        return json_list(parts)


def json_list(fragments: Iterable[bytes]) -> bytes:
    """The JSON array of encoded `fragments`, built with one copy of each."""
    parts = [b"["]
    for data in fragments:
        parts += (data, b",")
    parts[-1] = b"]" if len(parts) > 1 else b"[]"
    return b"".join(parts)


def _same(old: Basis, new: Basis) -> bool:
    # entries are compared by identity (immutable, replaced on change), plain values by value
    return all(a is b or a == b for a, b in zip(old, new, strict=True))
