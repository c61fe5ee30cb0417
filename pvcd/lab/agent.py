"""The lab node agent: look into (and tamper with) a node's `test:///` libvirt from outside.

The libvirt test driver keeps each connection's domains inside the daemon's process, so no
other process (no `virsh`, no test) can see them. In the lab each daemon therefore serves this
tiny agent on a unix socket (`agent.sock` in the node's folder, named by its launch record): one
JSON request per connection, answered from the daemon's own libvirt connection — what libvirt
says, not what ZooKeeper says. `destroy` simulates a VM killed behind the daemon's back. A lab
plug-in (`pvcd.lab.node`): a production daemon has no way to start it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from typing import Any

log = logging.getLogger(__name__)


class LabAgent:
    def __init__(self, path: str, driver: Any) -> None:
        self.path = path
        self.driver = driver
        self._server: socketserver.UnixStreamServer | None = None

    def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        agent = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    request = json.loads(self.rfile.readline() or b"{}")
                    reply = agent.answer(request)
                except Exception as exc:  # reported to the caller, the agent keeps serving
                    reply = {"error": repr(exc)}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self._server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="lab-agent",
                         daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if os.path.exists(self.path):
            os.unlink(self.path)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "domains":
            return {"domains": [
                {"uuid": d.uuid, "name": d.name, "state": _text(d.state),
                 "reason": str(d.reason)} for d in self.driver.list_domains()]}
        if command == "destroy":
            self.driver.destroy(str(request["uuid"]))
            return {"ok": True}
        return {"error": f"unknown command {command!r}"}


def ask(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    if "error" in reply:
        raise RuntimeError(f"lab agent: {reply['error']}")
    return reply


def _text(state: Any) -> str:
    return str(getattr(state, "value", state))
