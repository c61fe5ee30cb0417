"""Asking a ZooKeeper server about itself with its four-letter commands (`srvr`, `ruok`):
whether it serves, and in which role. Needs the command in the server's
`4lw.commands.whitelist` and its plain client port. Used by the `zkpr` health check and the lab.
"""

from __future__ import annotations

import socket


def four_letter(host: str, port: int, word: str, timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command and return the answer ('' when unreachable)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def serving_mode(answer: str) -> str:
    """The `Mode:` of a `srvr` answer ('standalone', 'leader', 'follower'), or '' when the
    server does not serve (unreachable, or "not currently serving requests": no quorum).
    `ruok` is no test: it answers `imok` before the server serves."""
    for line in answer.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return ""
