"""The lab's front door: a TCP forwarder from the host's loopback into the lab's underlay.

In a network lab the node daemons, their API and the floating IP live in network namespaces;
the host's root namespace is left untouched. This forwarder listens on 127.0.0.1:<port> in the
root namespace and opens each outgoing connection from inside the underlay namespace (a socket
keeps the namespace it was created in), so operators and tests reach the API on the floating
IP the way a router would give them access: `lab.json`'s `api` points here.

Run by the lab as `python -m pvcd.lab.proxy --port P --netns NS --target ADDR:PORT`.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading

from pvcd.drivers.netns import run_in_netns


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(port: int, netns: str, target: tuple[str, int]) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    while True:
        client, _ = listener.accept()

        def connect() -> socket.socket:
            return socket.create_connection(target, timeout=5)

        try:
            upstream = run_in_netns(netns, connect, timeout=6)
        except OSError:
            client.close()  # the floating IP is not up (no primary yet): refuse
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    serve(args.port, args.netns, (host, int(port)))


if __name__ == "__main__":
    main()
