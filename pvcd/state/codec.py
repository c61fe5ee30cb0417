"""The byte form of a ZooKeeper document: compact, sorted JSON."""

from __future__ import annotations

import json
from typing import Any


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw.decode())
    except ValueError:
        return None
