"""The lab: a real pvcd cluster on one machine (ZooKeeper + N node daemons).

`Lab(workdir).up(nodes=3)` starts a ZooKeeper (or an ensemble) and N node daemons (`python -m
pvcd.lab.node`: `pvcd run` plus the lab's plug-ins), each with its own config file and launch
record (`pvcd.lab.launch`), with authentication on and a generated token, waits until the API
answers and every node runs, and writes `workdir/lab.json` for scripts and tests. `down()` stops
everything it started and removes what it created. Later issues extend it (libvirt, network
namespaces, Ceph); each part is started and stopped here.

The API follows the primary: every coordinator is configured to listen on the same loopback
address and port, and only the primary binds it, so `lab.json`'s `api` stays valid across
handovers (a stand-in for the floating IP until the HA issue puts nodes in namespaces).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, cast

import yaml

from pvcd.domain.health_checks import DISK, LOAD, NODE_CHECKS, ZKPR
from pvcd.drivers.host import pid_alive, signal_pid
from pvcd.lab import agent
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.ceph_cluster import node_ceph_root, start_lab_ceph, stop_device_osds, stop_lab_ceph
from pvcd.lab.info import LAB_FILE, LabInfo, LabNode
from pvcd.lab.launch import (
    NodeLaunch,
    clear_going_down,
    lab_environment,
    load_launch,
    mark_going_down,
    reap,
    start_unless_running,
    stop_node_daemons,
)
from pvcd.lab.libvirt_ceph import LIBVIRT_CEPH_USER, define_ceph_secret, libvirt_client_key
from pvcd.lab.libvirtd import LibvirtdLab
from pvcd.lab.libvirtd_files import BIND_TARGETS
from pvcd.lab.netns import FLOATING_IP, SERVICE_IP, UNDERLAY_NET, LabNetwork, in_ns
from pvcd.lab.qemu_guest import build_guest_kernel, guest_console_log, qemu_guest_xml
from pvcd.lab.tls import make_self_signed_cert
from pvcd.lab.zookeeper import ZooKeeperEnsemble, free_port, server_doc, server_from_doc

_FLOATING_PROBE = """
import json, sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"X-Api-Key": sys.argv[2]})
with urllib.request.urlopen(request, timeout=float(sys.argv[3])) as response:
    print(json.dumps(json.loads(response.read())))
"""
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
LIBVIRT_KINDS = ("test", "qemu")
HEALTH_INTERVAL = 2.0  # seconds between two rounds of node health checks (tests wait for them)
# where a QEMU lab node's incoming QEMU listens, and its peers send the memory (loopback: every
# node is on this machine; LibvirtdInstance.migration_params says the same)
QEMU_LAB_MIGRATION_URI = "tcp://127.0.0.1"


class Lab:
    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).resolve()
        self.info: LabInfo | None = None
        self.zookeeper: ZooKeeperEnsemble | None = None
        self.ceph: ThrowawayCeph | None = None
        self.libvirtd: LibvirtdLab | None = None

    @property
    def lab_file(self) -> Path:
        return self.workdir / LAB_FILE

    # bring up
    def up(self, nodes: int = 3, zk_ensemble: int = 1, coordinators: int | None = None,
           session_timeout: float = 3.0, keepalive_interval: float = 1.0, ceph: bool = False,
           auth: bool = True, tls: bool = False, timeout: float = 90.0,
           network: bool = False, fencing: str | None = None,
           fence_overrides: dict[str, str] | None = None,
           dead_threshold: int = 3, libvirt: str = "test",
           ceph_stats_interval: float = 2.0, watchdog_timeout: int | None = None,
           zookeeper_tls: bool = False, ceph_memstore_gib: int = 1,
           domain_type: str = "qemu", health_interval: float | None = None) -> LabInfo:
        """`libvirt`: "test" (a `test:///` file per node, inside its daemon) or "qemu" (a real
        libvirtd per node, tiny QEMU guests that boot and live-migrate). `fencing` None: "lab"
        with the test driver, "none" with QEMU (the lab fence kills only the node's daemon;
        its QEMU guests would survive and run twice once recovered elsewhere).
        `watchdog_timeout`: every node arms the lab's fake watchdog (`pvcd.lab.watchdog`) with
        it, and a watchdog board process resets nodes that stop petting theirs.
        `zookeeper_tls`: the nodes reach ZooKeeper over TLS only (its secureClientPort).
        With `network`, Ceph runs in the underlay namespace (next to ZooKeeper) and each node's
        libvirtd in the node's namespace, where its guests' NICs join the node's bridges.
        `ceph_memstore_gib`: each memstore OSD's capacity (RAM, taken only as data is written;
        the pools' free space follows it; guest images need more than the default 1 GiB).
        `domain_type`: the nodes' `drivers.libvirt.domain_type` in a QEMU lab (`qemu`: TCG;
        `kvm` only where Linux guests boot under the machine's KVM). `health_interval`: the
        nodes' `health.interval` (None: the lab's HEALTH_INTERVAL, 2 s)."""
        if self.lab_file.exists():
            raise RuntimeError(f"a lab is already described in {self.lab_file}; "
                               "run `pvcd lab down` first")
        if nodes < 1 or zk_ensemble not in (1, 3):
            raise ValueError("need at least one node, and a ZooKeeper of 1 or 3 servers")
        if libvirt not in LIBVIRT_KINDS:
            raise ValueError(f"libvirt must be one of {', '.join(LIBVIRT_KINDS)}, not {libvirt!r}")
        if fencing is None:
            fencing = "none" if libvirt == "qemu" else "lab"
        if libvirt == "qemu" and "lab" in {fencing, *(fence_overrides or {}).values()}:
            raise ValueError("the lab fence kills only the node daemon: with libvirt qemu the "
                             "node's guests would survive it; use fencing none or lab-fail")
        self.workdir.mkdir(parents=True, exist_ok=True)
        clear_going_down(self.workdir / "nodes")  # left by a `down` that kept the folders
        coordinators = min(3, nodes) if coordinators is None else coordinators
        lab_net = LabNetwork(secrets.token_hex(3)) if network else None
        if lab_net is None:
            self.zookeeper = ZooKeeperEnsemble(self.workdir / "zookeeper", zk_ensemble,
                                               tls=zookeeper_tls)
        else:  # ZooKeeper on the cluster network: a partitioned node loses it for real
            lab_net.up([f"node{i}" for i in range(1, nodes + 1)])
            self.zookeeper = ZooKeeperEnsemble(self.workdir / "zookeeper", zk_ensemble,
                                               address=SERVICE_IP, netns=lab_net.underlay,
                                               tls=zookeeper_tls)
        try:
            self.zookeeper.start()
        except BaseException:
            if lab_net is not None:
                lab_net.down()
            raise
        api_port = free_port()
        tls_config: dict[str, Any] = {"enabled": False}
        if tls:
            cert, key = make_self_signed_cert(self.workdir / "tls")
            tls_config = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
        scheme = "https" if tls else "http"
        info = LabInfo(
            workdir=str(self.workdir), api=f"{scheme}://127.0.0.1:{api_port}/api/v1",
            token=str(uuid.uuid4()), zookeeper=self.zookeeper.connect_string, zk_root="/pvc",
            session_timeout=session_timeout, created=time.time(),
            zookeeper_servers=[server_doc(s) for s in self.zookeeper.servers],
            libvirt=libvirt, zookeeper_user="pvcd", zookeeper_password=secrets.token_hex(16),
            zookeeper_ca=str(self.zookeeper.ca_file) if zookeeper_tls else None,
        )
        if ceph:
            self.info = info
            try:
                self.ceph, info.ceph = start_lab_ceph(
                    self.workdir / "ceph", nodes, memstore_bytes=ceph_memstore_gib << 30,
                    **({"address": SERVICE_IP, "netns": lab_net.underlay} if lab_net else {}))
            except BaseException:
                self.down()
                raise
        if libvirt == "qemu":
            self.info = info
            try:
                self._start_libvirtd(info, nodes, lab_net, domain_type)
            except BaseException:
                self.down()
                raise
        if lab_net is not None:
            proxy_port = free_port()
            info.network = {"id": lab_net.lab_id,
                            "api_floating": f"{scheme}://{FLOATING_IP}:{api_port}/api/v1",
                            "proxy_port": proxy_port}
            info.api = f"{scheme}://127.0.0.1:{proxy_port}/api/v1"
        secret = secrets.token_hex(32)
        backups = self.workdir / "backups"  # backup.allowed_paths of every node (docs/backups.md)
        backups.mkdir(parents=True, exist_ok=True)
        info.backup_path = str(backups)
        for index in range(1, nodes + 1):
            name = f"node{index}"
            folder = self.workdir / "nodes" / name
            folder.mkdir(parents=True, exist_ok=True)
            config = {
                "node": {"name": name, "coordinator": index <= coordinators},
                "cluster": {"coordinators": self.zookeeper.hosts, "zookeeper_root": info.zk_root,
                            "session_timeout": session_timeout,
                            "zookeeper_user": info.zookeeper_user,
                            "zookeeper_password": info.zookeeper_password,
                            "zookeeper_tls": {"enabled": zookeeper_tls,
                                              "ca_file": info.zookeeper_ca}},
                "api": {"listen": "127.0.0.1", "port": api_port,
                        # every lab client comes from one address, and the API fuzzer
                        # (tests/e2e/test_openapi_fuzz.py) sends bad tokens to every endpoint
                        # on purpose: a failure budget that they do not exhaust
                        "auth": {"enabled": auth, "secret_key": secret,
                                 "tokens": [{"token": info.token, "description": "lab"}],
                                 "max_failures": 10000},
                        "tls": tls_config},
                "timing": {"keepalive_interval": keepalive_interval, "handover_timeout": 5.0,
                           "dead_threshold": dead_threshold},
            }
            config["drivers"] = {"libvirt": self._libvirt_config(folder, index, lab_net)}
            config["health"] = self._health_config(index, index <= coordinators,
                                                   health_interval)
            config["backup"] = {"allowed_paths": [info.backup_path]}
            if lab_net is not None:  # the node's client networks live in its own namespace
                cast(dict[str, Any], config.setdefault("drivers", {}))["network"] = {
                    **lab_net.node_net(name, index).config(),
                    "state_dir": str(folder / "networks"), "dnsmasq_user": "root",
                    "resync_interval": 2.0}
                # the cluster floating IP on the underlay: held by the primary, and the API
                # answers on it (from inside the underlay: see LabNetwork.add_client)
                config["networks"] = {"cluster": {
                    "device": "eth0", "network": f"{UNDERLAY_NET}.0/24",
                    "floating_ip": f"{FLOATING_IP}/24"},
                    # the lab's namespaces reach no resolver of the host: other names are
                    # REFUSED at once instead of timing out
                    "dns": {"upstream_servers": []}}
                # the daemon runs inside its node's namespace: its API answers on the floating
                # IP only (lab.json's `api` is the lab proxy into the underlay)
                cast(dict[str, Any], config["api"])["listen"] = FLOATING_IP
                # the floating IP is on the lab's private underlay: a lab without auth may
                # serve it (a production API without auth stays on loopback unless told)
                cast(dict[str, Any], config["api"])["auth"]["allow_unauthenticated"] = not auth
            # every coordinator knows how to fence every node (its own authority)
            targets = []
            for other in range(1, nodes + 1):
                driver = (fence_overrides or {}).get(f"node{other}", fencing)
                if driver == "none":
                    continue
                target: dict[str, Any] = {"node": f"node{other}", "driver": driver}
                if driver == "watchdog":
                    target["watchdog_timeout"] = watchdog_timeout
                targets.append(target)
            fencing_config: dict[str, Any] = {"targets": targets}
            if watchdog_timeout is not None:
                fencing_config.update(watchdog_device=str(folder / "watchdog"),
                                      watchdog_timeout=watchdog_timeout)
            config["fencing"] = fencing_config
            binds: list[list[str]] = []
            if info.ceph is not None:  # OSD ownership: docs/storage.md
                cast(dict[str, Any], config.setdefault("drivers", {}))["ceph"] = {
                    "enabled": True, "conf_file": info.ceph["conf"],
                    "keyring": info.ceph["keyring"],
                    "stats_interval": ceph_stats_interval, "request_timeout": 60.0,
                    "osd_launcher": "process",
                    "osd_run_dir": str(folder / "osd-run"), **self._rbd_auth_config()}
                binds = node_ceph_root(folder, info.ceph, _node_address(lab_net, name, index))
            binds += self._node_binds(index)
            config_path = folder / "pvcd.yaml"
            write_private(config_path, yaml.safe_dump(config, sort_keys=False))
            info.nodes.append(LabNode(name, index <= coordinators, str(config_path),
                                      str(folder / "pvcd.log"), binds=binds))
        self.info = info
        self.save()
        try:
            if lab_net is not None:
                info.network["proxy_pid"] = self._start_proxy(lab_net, api_port)  # type: ignore[index]
            if watchdog_timeout is not None:
                info.watchdog_pid = self._start_watchdog_board()
            for node in info.nodes:
                self.start_node(node.name)
            self.save()
            self.wait_ready(timeout)
        except BaseException:
            self.down()
            raise
        return info

    def _health_config(self, index: int, coordinator: bool, interval: float | None
                       ) -> dict[str, Any]:
        """Short rounds (tests wait for them; `interval` None: HEALTH_INTERVAL); coordinator
        i's local ZooKeeper is server i, and a coordinator without a server of its own (a
        1-server lab) skips `zkpr`. No node runs `load` or `disk`: the lab's nodes share one
        machine, whose load is all of theirs (and a busy test machine's), not one node's, and
        whose disks are none of theirs (`smartctl` each round, on every node, cost the machine
        ~15 ms of CPU per node per round)."""
        assert self.zookeeper is not None
        config: dict[str, Any] = {"interval": HEALTH_INTERVAL if interval is None else interval}
        skipped = {LOAD, DISK}
        servers = self.zookeeper.servers
        if coordinator and index <= len(servers):
            server = servers[index - 1]
            config["zookeeper"] = f"{server.address}:{server.client_port}"
        elif coordinator:
            skipped.add(ZKPR)
        config["checks"] = [name for name in NODE_CHECKS if name not in skipped]
        return config

    def _start_proxy(self, lab_net: LabNetwork, api_port: int) -> int:
        info = self._info()
        assert info.network is not None
        env = lab_environment(PACKAGE_PARENT)
        process = subprocess.Popen(
            [sys.executable, "-m", "pvcd.lab.proxy", "--port", str(info.network["proxy_port"]),
             "--netns", lab_net.underlay, "--target", f"{FLOATING_IP}:{api_port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True)
        return process.pid

    def _start_watchdog_board(self) -> int:
        with open(self.workdir / "watchdog-board.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "pvcd.lab.watchdog", "--nodes-dir",
                 str(self.workdir / "nodes")], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=lab_environment(PACKAGE_PARENT),
                start_new_session=True)
        return process.pid

    def _start_libvirtd(self, info: LabInfo, nodes: int, lab_net: LabNetwork | None,
                        domain_type: str) -> None:
        """One libvirtd per node (`libvirtd/nodeN`, docs/lab-qemu.md; in the node's network
        namespace with `lab_net`), the guest kernel, and `guest.xml`: the tiny guest, ready
        for `POST /vm`. With Ceph, each libvirtd gets the secret RBD disks authenticate with."""
        guest_xml = self.workdir / "guest.xml"
        # recorded first: from here on, down() cleans up whatever was started
        info.qemu = {"workdir": str(self.workdir / "libvirtd"), "nodes": nodes, "kernel": "",
                     "guest_xml": str(guest_xml), "domain_type": domain_type}
        kernel = build_guest_kernel(self.workdir / "guest")
        info.qemu["kernel"] = str(kernel)
        guest_xml.write_text(qemu_guest_xml("guest", kernel=kernel, with_uuid=False,
                                            console_log=guest_console_log("guest")))
        self.libvirtd = LibvirtdLab(
            self.workdir / "libvirtd", nodes,
            netns={f"node{i}": lab_net.node_ns(f"node{i}") for i in range(1, nodes + 1)}
            if lab_net else {})
        self.libvirtd.start()
        if self.ceph is not None:
            info.qemu["ceph_secret_uuid"] = str(uuid.uuid4())
            for instance in self.libvirtd.instances:
                self._define_ceph_secret(instance.uri)

    def _define_ceph_secret(self, libvirt_uri: str) -> None:
        """The libvirt secret holding `client.libvirt`'s key (pvcd.lab.libvirt_ceph)."""
        info = self._info()
        assert info.qemu is not None and info.ceph is not None
        cluster = self.ceph or ThrowawayCeph.load(info.ceph["workdir"])
        define_ceph_secret(libvirt_uri, info.qemu["ceph_secret_uuid"], LIBVIRT_CEPH_USER,
                           libvirt_client_key(cluster))

    def _rbd_auth_config(self) -> dict[str, Any]:
        """`drivers.ceph` keys naming the cephx user and libvirt secret of RBD disks (QEMU lab
        with Ceph; the defaults otherwise)."""
        qemu = self._info().qemu
        if not qemu or not qemu.get("ceph_secret_uuid"):
            return {}
        return {"libvirt_user": LIBVIRT_CEPH_USER,
                "libvirt_secret_uuid": qemu["ceph_secret_uuid"]}

    def _libvirt_config(self, folder: Path, index: int,
                        lab_net: LabNetwork | None = None) -> dict[str, Any]:
        """Node `index`'s `drivers.libvirt`: its own libvirtd (QEMU lab; peers migrate over its
        unix socket, the memory over loopback, or over the underlay between node namespaces;
        VMs are defined for TCG), or an empty `test:///` file."""
        if self.libvirtd is not None:
            instance = self.libvirtd[index - 1]
            qemu = self._info().qemu or {}
            migration_uri = QEMU_LAB_MIGRATION_URI
            if lab_net is not None:
                migration_uri = f"tcp://{lab_net.node_net(f'node{index}', index).underlay_address}"
            # console logs: the default /var/log/libvirt/pvcd, which is this node's own in
            # its libvirtd's mount namespace and in its daemon's (`_node_binds`)
            (instance.paths.bind_source("log") / "pvcd").mkdir(parents=True, exist_ok=True)
            return {"uri": instance.uri, "peer_uri": instance.peer_uri,
                    "migration_uri": migration_uri,
                    "domain_type": qemu.get("domain_type", "qemu")}
        state = folder / "libvirt-test.xml"
        state.write_text("<node>\n</node>\n")  # an empty test:/// hypervisor
        return {"uri": f"test://{state}"}

    def _node_binds(self, index: int) -> list[list[str]]:
        """Folders node `index`'s daemon sees in place of the host's, as a machine of its own
        would have them: in a QEMU lab its libvirtd's /var/log/libvirt, where its guests'
        console logs are (`drivers.libvirt.console_log_directory`)."""
        if self.libvirtd is None:
            return []
        logs = self.libvirtd[index - 1].paths.bind_source("log")
        return [[str(logs), BIND_TARGETS["log"]]]

    def add_node(self, timeout: float = 60.0) -> str:
        """Add a (non-coordinator) node to the running lab, as an operator adds a hypervisor:
        its config is the first node's with its own name, state and network; returns its name."""
        info = self._info()
        index = max(int(n.name.removeprefix("node")) for n in info.nodes) + 1
        name = f"node{index}"
        folder = self.workdir / "nodes" / name
        folder.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load(Path(info.nodes[0].config).read_text())
        config["node"] = {"name": name, "coordinator": False}
        node_net = LabNetwork(info.network["id"]) if info.network else None
        if info.qemu:  # a libvirtd of its own, like the other nodes
            grown = LibvirtdLab(Path(info.qemu["workdir"]), index,  # adopts the running ones
                                netns={f"node{i}": node_net.node_ns(f"node{i}")
                                       for i in range(1, index + 1)} if node_net else {})
            if self.libvirtd is not None:  # started by this process: keep the handles that reap
                grown.instances[:len(self.libvirtd.instances)] = self.libvirtd.instances
            self.libvirtd = grown
            info.qemu["nodes"] = index
        if node_net is not None:
            config["drivers"]["network"].update(node_net.add_node(name, index).config(),
                                                state_dir=str(folder / "networks"))
        if info.qemu:  # in the node's namespace, which exists now
            assert self.libvirtd is not None
            self.libvirtd[index - 1].start()
            if info.qemu.get("ceph_secret_uuid"):
                self._define_ceph_secret(self.libvirtd[index - 1].uri)
        config["drivers"]["libvirt"] = self._libvirt_config(folder, index, node_net)
        binds: list[list[str]] = []
        if info.ceph:
            config["drivers"]["ceph"]["osd_run_dir"] = str(folder / "osd-run")
            binds = node_ceph_root(folder, info.ceph, _node_address(node_net, name, index))
        binds += self._node_binds(index)
        config_path = folder / "pvcd.yaml"
        write_private(config_path, yaml.safe_dump(config, sort_keys=False))
        info.nodes.append(LabNode(name, False, str(config_path), str(folder / "pvcd.log"),
                                  binds=binds))
        self.save()
        self.start_node(name)
        self.wait_ready(timeout)
        return name

    def start_node(self, name: str) -> int:
        """Start node `name`'s daemon, as its launch record (written here) says."""
        info = self._info()
        node = info.node(name)
        folder = Path(node.config).parent
        config = yaml.safe_load(Path(node.config).read_text())
        record = NodeLaunch(
            node=name, command=[sys.executable, "-m", "pvcd.lab.node", "--config", node.config],
            cwd=os.getcwd(), log=node.log, env=lab_environment(PACKAGE_PARENT),
            # in a mount namespace of its own (a lab fence restarts it so too)
            binds=node.binds,
            # the node daemon lives in its node's network namespace
            netns=LabNetwork(info.network["id"]).node_ns(name) if info.network else None,
            floating=[[net["device"], net["floating_ip"]]
                      for net in (config.get("networks") or {}).values()
                      if net and net.get("device") and net.get("floating_ip")],
            agent_socket=str(folder / "agent.sock") if info.libvirt == "test" else None,
            ceph_workdir=info.ceph["workdir"] if info.ceph else None)
        node.pid = start_unless_running(folder, record)
        self.save()
        return node.pid

    def wait_ready(self, timeout: float = 90.0) -> None:
        info = self._info()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for node in info.nodes:
                if not pid_alive(node.pid):
                    raise RuntimeError(f"{node.name} exited during start; see {node.log}")
            try:
                nodes = self.api_get("/node")
                states = {n["name"]: n["daemon_state"] for n in nodes}
                if len(states) == len(info.nodes) and set(states.values()) == {"run"} and \
                        any(n["coordinator_state"] == "primary" for n in nodes):
                    return
                last = f"node states {states}"
            except (OSError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(f"lab not ready after {timeout}s: {last}")

    # operations used by tests and `pvcd lab status`
    def network(self) -> LabNetwork:
        """The lab's namespaces (labs started with `network=True`): attach VMs, vLANs."""
        info = self._info()
        if not info.network:
            raise RuntimeError("this lab has no network namespaces (start it with network=True)")
        return LabNetwork(info.network["id"])

    def floating_api_get(self, client_ns: str, path: str, timeout: float = 5.0) -> Any:
        """GET `path` from the API on the floating IP, from inside namespace `client_ns` (an
        operator's machine on the underlay, `LabNetwork.add_client`); None when it does not
        answer. Runs in a child process that enters the namespace."""
        info = self._info()
        if not info.network:
            raise RuntimeError("this lab has no network namespaces (start it with network=True)")
        result = in_ns(client_ns, sys.executable, "-c", _FLOATING_PROBE,
                       info.network["api_floating"] + path, info.token, str(timeout),
                       check=False, timeout=timeout + 5)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def api_get(self, path: str, timeout: float = 5.0) -> Any:
        info = self._info()
        request = urllib.request.Request(info.api + path, headers={"X-Api-Key": info.token})
        context = None
        if info.api.startswith("https:"):
            context = ssl.create_default_context(cafile=str(self.workdir / "tls" / "cert.pem"))
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read())

    def domains(self, name: str, timeout: float = 1.0) -> dict[str, dict[str, str]]:
        """The domains of node `name` as its libvirt reports them, by UUID (the lab agent, or
        the node's own libvirtd in a QEMU lab). `timeout`: how long the agent may take (a
        frozen node's never answers; thousands of domains on a loaded machine take seconds)."""
        if self._info().libvirt == "qemu":
            driver = self._libvirtd_driver(name)
            try:
                return {d.uuid: {"uuid": d.uuid, "name": d.name, "state": d.state.value,
                                 "reason": d.reason} for d in driver.list_domains()}
            finally:
                driver.close()
        reply = agent.ask(self._agent_socket(name), {"command": "domains"}, timeout=timeout)
        return {d["uuid"]: d for d in reply["domains"]}

    def destroy_domain(self, name: str, uuid: str) -> None:
        """Destroy a domain behind the daemon's back (as a crash or an operator would)."""
        if self._info().libvirt == "qemu":
            driver = self._libvirtd_driver(name)
            try:
                driver.destroy(uuid)
            finally:
                driver.close()
            return
        agent.ask(self._agent_socket(name), {"command": "destroy", "uuid": uuid})

    def _libvirtd_driver(self, name: str) -> Any:
        """A libvirt driver on node `name`'s libvirtd (QEMU lab); the caller closes it."""
        from pvcd.drivers.libvirt import LibvirtDriver  # libvirt-python: only when asked

        config = yaml.safe_load(Path(self._info().node(name).config).read_text())
        return LibvirtDriver(config["drivers"]["libvirt"]["uri"])

    def _agent_socket(self, name: str) -> str:
        return str(Path(self._info().node(name).config).parent / "agent.sock")

    def refresh_pids(self) -> None:
        """Take the node pids from their launch records (a lab fence restarts a node's daemon
        and records its new pid there)."""
        info = self._info()
        for node in info.nodes:
            node.pid = load_launch(Path(node.config).parent).pid
        self.save()

    def signal_node(self, name: str, sig: int) -> None:
        pid = self._info().node(name).pid
        if pid_alive(pid):
            os.kill(pid, sig)

    def wait_node_exit(self, name: str, timeout: float = 15.0) -> bool:
        pid = self._info().node(name).pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reap(pid)
            if not pid_alive(pid):
                return True
            time.sleep(0.02)
        return False

    def status(self) -> list[dict[str, Any]]:
        info = self._info()
        try:
            api_nodes = {n["name"]: n for n in self.api_get("/node")}
        except (OSError, ValueError):
            api_nodes = {}
        rows = []
        for node in info.nodes:
            api = api_nodes.get(node.name, {})
            rows.append({"name": node.name, "pid": node.pid, "process": pid_alive(node.pid),
                         "daemon_state": api.get("daemon_state", "?"),
                         "coordinator_state": api.get("coordinator_state", "?")})
        return rows

    # tear down
    def down(self, timeout: float = 15.0) -> None:
        info = self.info or (self.load() if self.lab_file.exists() else None)
        if info is not None:
            # no lab fence starts a daemon again from now on; one that had already decided to
            # is caught by the looks for daemons that go on until none is left
            mark_going_down(self.workdir / "nodes")
            stop_node_daemons([node.config for node in info.nodes],
                              [node.pid for node in info.nodes], timeout)
        if info is not None and info.watchdog_pid:  # after the daemons: no reset now
            signal_pid(info.watchdog_pid, signal.SIGKILL)
            reap(info.watchdog_pid)
            (self.workdir / "watchdog-board.log").unlink(missing_ok=True)
        if info is not None and info.ceph:
            for node in info.nodes:  # OSDs on devices, started by the node daemons
                stop_device_osds(Path(node.config).parent / "osd-run")
            stop_lab_ceph(Path(info.ceph["workdir"]), self.ceph)
            _remove_tree(Path(info.ceph["workdir"]))  # with the nodes' lock file
            self.ceph = None
        if info is not None and info.qemu:
            self._stop_libvirtd(Path(info.qemu["workdir"]), int(info.qemu["nodes"]))
            _remove_tree(self.workdir / "guest")
            Path(info.qemu["guest_xml"]).unlink(missing_ok=True)
        # after Ceph and libvirtd, which may live in its namespaces: each stops cleanly first
        if info is not None and info.network:
            signal_pid(int(info.network.get("proxy_pid", 0)), signal.SIGKILL)
            reap(int(info.network.get("proxy_pid", 0)))
            LabNetwork(info.network["id"]).down()
        ensemble = self.zookeeper
        if ensemble is None and info is not None:
            ensemble = ZooKeeperEnsemble(self.workdir / "zookeeper", len(info.zookeeper_servers))
            ensemble.servers = [server_from_doc(d) for d in info.zookeeper_servers]
        if ensemble is not None:
            ensemble.stop()
        _remove_tree(self.workdir / "zookeeper")
        if not os.environ.get("PVCD_LAB_KEEP_LOGS"):  # debugging: keep the node folders
            _remove_tree(self.workdir / "nodes")
        _remove_tree(self.workdir / "tls")
        backups = self.workdir / "backups"  # kept when it holds something: backups are data
        if backups.is_dir() and not any(backups.iterdir()):
            backups.rmdir()
        self.lab_file.unlink(missing_ok=True)
        self.lab_file.with_suffix(".tmp").unlink(missing_ok=True)
        if self.workdir.exists() and not any(self.workdir.iterdir()):
            self.workdir.rmdir()
        self.info = None

    def _stop_libvirtd(self, workdir: Path, nodes: int) -> None:
        """Stop every node's libvirtd with its guests (a process of its own adopts them from
        their state files), and remove their folders unless PVCD_LAB_KEEP_LOGS."""
        libvirtd = self.libvirtd or LibvirtdLab(workdir, nodes)
        libvirtd.stop()
        self.libvirtd = None
        if not os.environ.get("PVCD_LAB_KEEP_LOGS"):
            _remove_tree(workdir)

    # persistence
    def save(self) -> None:
        info = self._info()
        tmp = self.lab_file.with_suffix(".tmp")
        tmp.write_text(info.to_json())
        tmp.chmod(0o600)  # it holds the API token and the ZooKeeper credentials
        tmp.replace(self.lab_file)

    def load(self) -> LabInfo:
        self.info = LabInfo.from_json(self.lab_file.read_text())
        return self.info

    def _info(self) -> LabInfo:
        if self.info is None:
            if not self.lab_file.exists():
                raise RuntimeError(f"no lab in {self.workdir} (no {LAB_FILE})")
            self.load()
        assert self.info is not None
        return self.info


def _node_address(lab_net: LabNetwork | None, name: str, index: int) -> str:
    """Where node `index`'s own services (its OSDs) listen: its underlay address in a lab with
    namespaces, else loopback."""
    return lab_net.node_net(name, index).underlay_address if lab_net else "127.0.0.1"


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner alone: a node's configuration holds the
    API tokens, and pvcd refuses one that every user can read (`pvcd.config.loader`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through os.open
    with os.fdopen(fd, "w") as file:
        file.write(text)
