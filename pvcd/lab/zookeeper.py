"""ZooKeeper servers for the lab and the tests: a single server or an ensemble on loopback.

The Debian package ships no running service; we start `QuorumPeerMain` directly with a config of
our own in the lab's folder (see docs/lab.md). A short tickTime lets sessions time out in about a
second, so failover tests are fast. With `tls`, every server also serves TLS on a
`secureClientPort` (a self-signed certificate for its address, as a PEM keystore), and `hosts`
names those ports; the plain port stays for the four-letter commands the lab asks.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvcd.drivers.host import pid_alive, signal_pid
from pvcd.drivers.netns import run_in_netns
from pvcd.drivers.zookeeper_server import four_letter, serving_mode
from pvcd.lab.tls import make_self_signed_cert

# netty: the server side of TLS (`NettyServerCnxnFactory`)
ZK_CLASSPATH = ":".join(f"/usr/share/java/{jar}.jar" for jar in (
    "zookeeper", "slf4j-simple", "netty-buffer", "netty-codec", "netty-common", "netty-handler",
    "netty-resolver", "netty-transport", "netty-transport-native-unix-common",
    "netty-transport-native-epoll"))
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ZooKeeperServer:
    index: int
    client_port: int
    quorum_port: int
    election_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    pid: int = 0
    address: str = "127.0.0.1"
    netns: str | None = None
    secure_port: int = 0  # TLS clients (0: none)

    def mode(self) -> str:
        """'standalone', 'leader', 'follower', or '' when not serving."""
        return serving_mode(run_in_netns(
            self.netns, lambda: four_letter(self.address, self.client_port, "srvr")))


@dataclass
class ZooKeeperEnsemble:
    """`size` ZooKeeper servers, their data in `workdir/zk<i>`; clients connect to `address`
    (127.0.0.1, or an underlay address when the servers run inside network namespace
    `netns`, as in the network lab)."""

    workdir: Path
    size: int = 1
    tick_ms: int = 500
    servers: list[ZooKeeperServer] = field(default_factory=list)
    address: str = "127.0.0.1"
    netns: str | None = None
    tls: bool = False

    @property
    def hosts(self) -> list[str]:
        return [f"{self.address}:{s.secure_port if self.tls else s.client_port}"
                for s in self.servers]

    @property
    def ca_file(self) -> Path:
        """The certificate TLS clients trust (self-signed: the servers' own)."""
        return self.workdir / "tls" / "cert.pem"

    @property
    def connect_string(self) -> str:
        return ",".join(self.hosts)

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.servers:
            self.servers = [
                ZooKeeperServer(i + 1, free_port(), free_port(), free_port(),
                                self.workdir / f"zk{i + 1}", address=self.address,
                                netns=self.netns, secure_port=free_port() if self.tls else 0)
                for i in range(self.size)
            ]
        if self.tls and not self.ca_file.exists():
            cert, key = make_self_signed_cert(self.workdir / "tls", self.address)
            keystore = self.workdir / "tls" / "keystore.pem"
            keystore.write_text(key.read_text() + cert.read_text())
            keystore.chmod(0o600)
        for server in self.servers:
            self._write_config(server)
        for server in self.servers:
            self.start_server(server)
        self.wait_ready(timeout)

    def _write_config(self, server: ZooKeeperServer) -> None:
        data = server.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_ms}",
            "initLimit=10",
            "syncLimit=5",
            f"dataDir={data}",
            f"clientPort={server.client_port}",
            f"clientPortAddress={self.address}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,ruok,mntr,stat,conf",
            "maxClientCnxns=0",
            "autopurge.purgeInterval=0",
        ]
        if server.secure_port:
            tls = self.workdir / "tls"
            lines += [
                f"secureClientPort={server.secure_port}",
                f"secureClientPortAddress={self.address}",
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
                f"ssl.keyStore.location={tls / 'keystore.pem'}", "ssl.keyStore.type=PEM",
                f"ssl.trustStore.location={tls / 'cert.pem'}", "ssl.trustStore.type=PEM",
                "ssl.clientAuth=none",
            ]
        if self.size > 1:
            (data / "myid").write_text(f"{server.index}\n")
            for peer in self.servers:
                lines.append(
                    f"server.{peer.index}=127.0.0.1:{peer.quorum_port}:{peer.election_port}"
                )
        (server.folder / "zoo.cfg").write_text("\n".join(lines) + "\n")

    def start_server(self, server: ZooKeeperServer) -> None:
        with open(server.folder / "zookeeper.log", "ab") as log:
            server.process = self._spawn(server, log)
        server.pid = server.process.pid

    def _spawn(self, server: ZooKeeperServer, log: Any) -> subprocess.Popen[bytes]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.Popen(
            [*prefix, "java", "-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-Dzookeeper.log.dir=" + str(server.folder), "-cp", ZK_CLASSPATH, ZK_MAIN,
             str(server.folder / "zoo.cfg")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            modes = [s.mode() for s in self.servers]
            if self.size == 1 and modes == ["standalone"]:
                return
            if self.size > 1 and all(modes) and modes.count("leader") == 1:
                return
            for server in self.servers:
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError(
                        f"ZooKeeper server {server.index} exited with "
                        f"{server.process.returncode}; see {server.folder / 'zookeeper.log'}"
                    )
            time.sleep(0.05)
        raise TimeoutError(f"ZooKeeper not serving after {timeout}s (modes: "
                           f"{[s.mode() for s in self.servers]})")

    def leader(self) -> ZooKeeperServer | None:
        for server in self.servers:
            if server.mode() in ("leader", "standalone"):
                return server
        return None

    def kill(self, server: ZooKeeperServer, sig: int = signal.SIGKILL) -> None:
        signal_pid(server.pid, sig)
        if server.process is not None:
            server.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        for server in self.servers:
            signal_pid(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for server in self.servers:
            while pid_alive(server.pid) and time.monotonic() < deadline:
                if server.process is not None:
                    server.process.poll()
                time.sleep(0.05)
            if pid_alive(server.pid):
                signal_pid(server.pid, signal.SIGKILL)
            if server.process is not None:
                try:
                    server.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass


def server_doc(server: ZooKeeperServer) -> dict[str, Any]:
    return {"index": server.index, "pid": server.pid, "client_port": server.client_port,
            "quorum_port": server.quorum_port, "election_port": server.election_port,
            "folder": str(server.folder), "secure_port": server.secure_port}


def server_from_doc(doc: dict[str, Any]) -> ZooKeeperServer:
    return ZooKeeperServer(doc["index"], doc["client_port"], doc["quorum_port"],
                           doc["election_port"], Path(doc["folder"]), pid=doc["pid"],
                           secure_port=int(doc.get("secure_port", 0)))
