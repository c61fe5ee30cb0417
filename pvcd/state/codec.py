"""The byte form of a ZooKeeper document: compact, sorted JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

SHARED_WORD = 24  # string values up to this length are shared (states, node names, buses)


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw.decode())
    except ValueError:
        return None


def _shared(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {sys.intern(key): sys.intern(value)
            if type(value) is str and len(value) <= SHARED_WORD else value
            for key, value in pairs}


def decode_shared(raw: bytes | None) -> Any:
    """`decode`, with every key and every short string value shared with the documents
    decoded before it: the cache holds thousands of documents of one shape, whose keys and
    words (states, node names, device buses) were otherwise one string object per document
    (measured: a VM's spec and status documents took about 10 KB decoded, 4 KB of it keys
    and short words)."""
    if not raw:
        return None
    try:
        return json.loads(raw.decode(), object_pairs_hook=_shared)
    except ValueError:
        return None
