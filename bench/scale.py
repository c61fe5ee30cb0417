"""Scale (issue 17): every row of the issue's table, black-box against a real lab.

A 3-node lab (libvirt test driver), VMs of ~2 KB of domain XML each, a new connection per
request (as the issue measured). Rows, for each VM count in --vms (default 1000,10000):

- `POST /vm` (define) latency with 8 writers, while the VMs are defined;
- define N VMs -> all running in libvirt (seen through the lab agent);
- `GET /vm` p50/p99, one client;
- 8 concurrent clients doing `GET /vm` for --seconds: requests/s, p50, p99 and the primary
  daemon's CPU time per request; the same with `Accept-Encoding: gzip`, and one client sending
  the list's ETag back (`If-None-Match`: 304). The concurrent clients are ApacheBench (`ab`,
  Debian's apache2-utils, installed by scripts/setup) when it is installed: 8 Python threads
  on this 2-core machine take CPU and the GIL themselves, and measured the client as much as
  the server. Without `ab`, Python threads measure (they unpack gzip, ab does not); each row
  names its client;
- RSS of each daemon (now and its peak, VmHWM) and its idle CPU over --idle seconds.
- For reference, the floor under the list rows: a bare loopback TCP transfer of the list's
  size, no HTTP and no server (its wall time, and the sender's CPU time).

Then a 16-node lab (`--big-lab 16`, 0 to skip): time to come up, RSS and idle CPU per daemon,
`GET /node` p50.

The labs run with pvcd's default timings (`--timing default`: a 10 s ZooKeeper session, a
keepalive every 2 s, dead after 6 missed), as a cluster would: the lab's own short timings
(`--timing lab`: 3 s, 1 s, 3) are for fast failover tests, and on a loaded 2-core machine
they fence nodes in the middle of a 10,000-VM define. Each section prints which it used.

Run as: .venv/bin/python -m bench.scale [--vms 1000,10000] [--seconds 10] [--idle 30]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pvcd.lab.lab import Lab, LabInfo

WRITERS = 8
TIMINGS: dict[str, tuple[float, float, int]] = {  # session timeout, keepalive, dead threshold
    "default": (10.0, 2.0, 6),
    "lab": (3.0, 1.0, 3),
}


def lab_up(lab: Lab, nodes: int, timing: str) -> LabInfo:
    session, keepalive, dead = TIMINGS[timing]
    return lab.up(nodes=nodes, session_timeout=session, keepalive_interval=keepalive,
                  dead_threshold=dead)
READERS = 8
# 1 MiB each: 10,000 of them fit the lab's 3 nodes (placement refuses a VM whose memory no node
# has free; at 64 MiB the lab was full after ~1,100 VMs)
MEMORY_KIB = 1024
GOALS = {  # the goals, printed next to each measurement
    "get_p50_1000": "<= 3 ms", "get_p50_10000": "<= 20 ms",
    "concurrent": ">= 1,000 req/s, p99 <= 20 ms", "define_p50": "<= 10 ms",
    "define_10000": "<= 45 s", "rss": "<= 150 MiB (<= 200 MiB in the lab)",
    "idle_cpu": "<= 1 % of a core",
}


def domain_xml(name: str, index: int) -> str:
    """A test-driver domain of ~2 KB, the size the issue measured with (MACs unique by
    `index`). 2 MiB of memory each: placement refuses a node whose VMs' memory would exceed
    its own, and 10,000 guests of 64 MiB need more than a lab machine has."""
    uuid = str(uuidlib.uuid4())
    disks = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='/var/lib/pvcd-bench/{name}-{i}.img'/><target dev='vd{chr(97 + i)}' "
        f"bus='virtio'/></disk>" for i in range(3))
    nics = "".join(
        f"<interface type='network'><source network='default'/><model type='virtio'/>"
        f"<mac address='52:54:0{i}:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:"
        f"{index & 255:02x}'/>"
        f"</interface>" for i in range(2))
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<title>scale benchmark guest {name}</title>"
            f"<description>pvcd scale benchmark guest {name}; its XML is about the size of a "
            f"production domain with a few disks, interfaces and the usual devices: the list "
            f"reads of the issue were measured with domains of this size</description>"
            f"<memory unit='KiB'>{MEMORY_KIB}</memory>"
            f"<currentMemory unit='KiB'>{MEMORY_KIB}</currentMemory>"
            f"<vcpu placement='static'>1</vcpu><os><type arch='x86_64'>hvm</type>"
            f"<boot dev='hd'/></os><features><acpi/><apic/></features>"
            f"<clock offset='utc'/><on_poweroff>destroy</on_poweroff>"
            f"<on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
            f"<devices>{disks}{nics}<serial type='pty'><target port='0'/></serial>"
            f"<console type='pty'><target type='serial' port='0'/></console>"
            f"<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
            f"<input type='tablet' bus='usb'/><video><model type='virtio'/></video>"
            f"<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
            f"<memballoon model='virtio'/></devices></domain>")


class Api:
    """Requests over a new connection each (as the issue measured)."""

    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.headers = {"X-Api-Key": token}

    def call(self, method: str, path: str, form: dict[str, str] | None = None,
             extra: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """`extra`: more request headers (Accept-Encoding, If-None-Match)."""
        body = urllib.parse.urlencode(form) if form else None
        headers = {**self.headers, **(extra or {})}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        start = time.perf_counter()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            connection.request(method, self.prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.getheader("Content-Encoding") == "gzip":
                data = gzip.decompress(data)  # a client that asks for gzip unpacks it too
        finally:
            connection.close()
        return response.status, data, time.perf_counter() - start


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def row(label: str, value: str, goal: str) -> None:
    print(f"{label:<58} {value:<40} goal {goal}", flush=True)




def define(api: Api, names: list[str]) -> list[float]:
    """Define the VMs with WRITERS threads; each POST's latency."""
    def post(name: str) -> float:
        xml = domain_xml(name, int(name[1:]))
        for attempt in range(3):  # a loaded machine may lose ZooKeeper for a moment
            status, data, took = api.call("POST", "/vm", {"xml": xml})
            if status == 200 or (attempt > 0 and b"already exists" in data):
                return took  # (the lost write had been committed after all)
            if b"ZooKeeper" not in data:
                break
        raise RuntimeError(f"POST /vm {name}: {status} {data[:200]!r}")

    with ThreadPoolExecutor(WRITERS) as pool:
        return list(pool.map(post, names))


def running_count(lab: Lab, nodes: list[str]) -> int:
    """VMs running in the nodes' libvirt; 0 when an agent did not answer in time or broke off
    (a loaded machine, a node fenced and restarted: the next poll asks again)."""
    try:
        return sum(sum(1 for d in lab.domains(node, timeout=60.0).values()
                       if d["state"] == "running")
                   for node in nodes)
    except (OSError, ValueError):  # (a timeout; an agent whose daemon went away mid-answer)
        return 0


def all_running(lab: Lab, nodes: list[str], target: int, stall: float) -> int:
    """Wait until `target` VMs run in the nodes' libvirt, giving up when the count has not
    grown for `stall` seconds (a loaded machine converges slowly; a VM that failed for good
    never runs); the count reached. Polled every 2 s: every poll lists every domain inside
    the node daemons."""
    best, progress = 0, time.monotonic()
    while time.monotonic() - progress < stall:
        running = running_count(lab, nodes)
        if running >= target:
            return running
        if running > best:
            best, progress = running, time.monotonic()
        time.sleep(2.0)
    return best


def single_reader(api: Api, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        status, _, took = api.call("GET", "/vm")
        assert status == 200, status
        latencies.append(took)
    return latencies


def revalidations(api: Api, count: int, etag: str) -> tuple[list[float], int]:
    """`count` GETs sending `etag` back: the latencies of the 304s, and how many were 200s
    instead (a lab still converging changes the list; each 200 brings the new tag along)."""
    latencies, changed = [], 0
    for _ in range(count):
        connection = http.client.HTTPConnection(api.host, api.port, timeout=120)
        start = time.perf_counter()
        try:
            connection.request("GET", api.prefix + "/vm",
                               headers={**api.headers, "If-None-Match": etag})
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        if response.status == 304:
            latencies.append(time.perf_counter() - start)
        else:
            assert response.status == 200, response.status
            changed += 1
            etag = response.getheader("ETag") or etag
    return latencies, changed


@dataclass
class Load:
    """What READERS concurrent clients got in a window, and who measured it."""

    served: int
    seconds: float
    p50: float
    p99: float
    client: str
    failed: str = ""  # failures other than a changed length, as ab counts them ("" none)

    def text(self, cpu: float | None) -> str:
        used = "" if cpu is None else f", primary CPU {cpu / max(1, self.served) * 1000:.2f} ms/req"
        failed = f", FAILED {self.failed}" if self.failed else ""
        return (f"{self.served / self.seconds:.0f} req/s, p50 {ms(self.p50)}, p99 {ms(self.p99)}"
                f"{used} ({self.client}){failed}")


def concurrent_readers(api: Api, seconds: float, extra: dict[str, str] | None = None) -> Load:
    """READERS clients doing `GET /vm` for `seconds`: ab when installed, else Python threads."""
    if AB is not None:
        return ab_readers(AB, api, seconds, extra)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def reader() -> None:
        while time.monotonic() < stop:
            status, _, took = api.call("GET", "/vm", extra=extra)
            assert status == 200
            with lock:
                latencies.append(took)

    threads = [threading.Thread(target=reader) for _ in range(READERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Load(len(latencies), seconds, statistics.median(latencies),
                percentile(latencies, 0.99), f"{READERS} Python threads")


AB = shutil.which("ab")  # ApacheBench, from apache2-utils


def ab_readers(ab: str, api: Api, seconds: float, extra: dict[str, str] | None) -> Load:
    """ab -c READERS for `seconds` (whole seconds), a new connection per request; its
    percentiles from its CSV (in ms, to the microsecond). ab does not unpack gzip."""
    window = max(1, round(seconds))
    headers = {**api.headers, **(extra or {})}
    url = f"http://{api.host}:{api.port}{api.prefix}/vm"
    with tempfile.TemporaryDirectory(prefix="pvcd-bench-ab-") as folder:
        csv = Path(folder) / "percentiles.csv"
        command = [ab, "-q", "-r", "-c", str(READERS), "-t", str(window), "-n", "100000000",
                   "-s", "120", "-e", str(csv)]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        done = subprocess.run([*command, url], capture_output=True, text=True, check=False,
                              timeout=window + 240)
        if done.returncode != 0:
            raise RuntimeError(f"ab failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        shares = dict(line.split(",") for line in csv.read_text().splitlines()[1:])
    out = done.stdout

    def number(label: str) -> float:
        found = re.search(rf"^{label}:\s+([\d.]+)", out, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    served, took = int(number("Complete requests")), number("Time taken for tests")
    failed = ""
    kinds = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)",
                      out)
    errors = sum(int(n) for n in kinds.groups()) if kinds else 0
    non_2xx = int(number("Non-2xx responses"))
    if errors or non_2xx:  # (a list that changed during the window fails only by length)
        failed = f"{errors} errors, {non_2xx} non-2xx of {served}"
    return Load(served, took or window, float(shares["50"]) / 1000,
                float(shares["99"]) / 1000, f"ab -c {READERS}", failed)


GZIP = {"Accept-Encoding": "gzip"}


def etag_of(api: Api) -> str | None:
    """The list's ETag (None from an API that sends none)."""
    connection = http.client.HTTPConnection(api.host, api.port, timeout=120)
    try:
        connection.request("GET", api.prefix + "/vm", headers=api.headers)
        response = connection.getresponse()
        response.read()
        return response.getheader("ETag")
    finally:
        connection.close()


def loopback_transfer(size: int, rounds: int = 20) -> tuple[float, float]:
    """Send `size` bytes over a new loopback TCP connection, `rounds` times, to a reader
    thread with a 1 MiB buffer: the p50 of the wall time and of the sender's CPU time. No
    HTTP, no server: what moving a list of that size costs at the least."""
    body = b"x" * size
    walls, cpus = [], []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for _ in range(rounds):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()

            def read(connection: socket.socket = client) -> None:
                buffer = bytearray(1 << 20)
                while connection.recv_into(buffer):
                    pass

            reader = threading.Thread(target=read)
            start, cpu = time.perf_counter(), time.thread_time()
            reader.start()
            server.sendall(body)
            cpus.append(time.thread_time() - cpu)
            server.close()
            reader.join()
            walls.append(time.perf_counter() - start)
            client.close()
    return statistics.median(walls), statistics.median(cpus)


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def primary_pid(lab: Lab) -> int | None:
    """The pid of the primary's daemon (None while no node says it is primary)."""
    return next((int(n["pid"]) for n in lab.status()
                 if n.get("coordinator_state") == "primary"), None)


def daemon_rows(lab: Lab, idle: float, label: str) -> None:
    """RSS and idle CPU of each node daemon (the primary named)."""
    info = lab.load()
    primary = next((n["name"] for n in lab.status()
                    if n.get("coordinator_state") == "primary"), None)
    before = {node.name: cpu_seconds(node.pid) for node in info.nodes}
    time.sleep(idle)  # a measurement window, not a wait for a condition
    for node in info.nodes:
        used = (cpu_seconds(node.pid) - before[node.name]) / idle * 100
        rss, peak = rss_mib(node.pid)
        role = "primary" if node.name == primary else "other"
        row(f"{label} {node.name} ({role}) RSS / peak", f"{rss:.0f} MiB / {peak:.0f} MiB",
            GOALS["rss"])
        row(f"{label} {node.name} ({role}) idle CPU over {idle:.0f} s", f"{used:.2f} % of a core",
            GOALS["idle_cpu"])


def vm_rounds(counts: list[int], seconds: float, idle: float, reads: int,
              timing: str) -> None:
    print(f"3-node lab, {timing} timings (session, keepalive, dead after): "
          f"{TIMINGS[timing]}", flush=True)
    lab = Lab(Path(tempfile.mkdtemp(prefix="pvcd-bench-scale-")) / "lab")
    info = lab_up(lab, 3, timing)
    api = Api(info.api, info.token)
    nodes = [node.name for node in info.nodes]
    defined = 0
    try:
        for count in counts:
            names = [f"s{i:05d}" for i in range(defined, count)]
            start = time.perf_counter()
            latencies = define(api, names)
            posted = time.perf_counter() - start
            row(f"POST /vm p50 / p99, {WRITERS} writers, {len(names)} defines",
                f"{ms(statistics.median(latencies))} / {ms(percentile(latencies, 0.99))}",
                GOALS["define_p50"])
            running = all_running(lab, nodes, count, stall=120.0)
            total = time.perf_counter() - start
            defined = count
            row(f"define {len(names)} VMs -> all running (to {count})",
                f"{total:.1f} s (POSTs done after {posted:.1f} s)" if running >= count else
                f"NOT REACHED: {running} of {count} running after {total:.1f} s (POSTs done "
                f"after {posted:.1f} s); the read rows go on with the VMs there are",
                GOALS["define_10000"] if count >= 10000 else "-")
            single_reader(api, 5)  # warm the fragments
            one = single_reader(api, reads if count <= 1000 else max(20, reads // 5))
            row(f"GET /vm p50 / p99, one client, {count} VMs",
                f"{ms(statistics.median(one))} / {ms(percentile(one, 0.99))}",
                GOALS["get_p50_1000"] if count <= 1000 else GOALS["get_p50_10000"])
            size = len(api.call("GET", "/vm")[1])
            wall, sender = loopback_transfer(size)
            row(f"  (bare loopback TCP transfer of {size / 1e6:.1f} MB, no server)",
                f"p50 {ms(wall)}, sender CPU {ms(sender)}", "the floor of the list rows")
            primary = primary_pid(lab)
            for label, extra, goal in (("", None, GOALS["concurrent"]), (", gzip", GZIP, "-")):
                # (gzip: what clients that ask for it get, pvc, browsers, curl --compressed;
                # it and the 304 row below are not rows of the table)
                before = None if primary is None else cpu_seconds(primary)
                load = concurrent_readers(api, seconds, extra)
                used = None if primary is None or before is None else \
                    cpu_seconds(primary) - before
                row(f"GET /vm, {READERS} concurrent clients{label}, {count} VMs",
                    load.text(used), goal)
            etag = etag_of(api)
            if etag is not None:
                same, changed = revalidations(api, reads, etag)
                note = f" ({changed} of {reads} 200: the list changed meanwhile)" if changed else ""
                row(f"GET /vm p50 / p99, If-None-Match (304), {count} VMs",
                    f"{ms(statistics.median(same))} / {ms(percentile(same, 0.99))}{note}"
                    if same else f"no 304: the list changed under every one of {reads}", "-")
            daemon_rows(lab, idle, f"{count} VMs:")
    finally:
        lab.down()


def big_lab(nodes: int, idle: float, reads: int, timing: str) -> None:
    print(f"{nodes}-node lab, {timing} timings (session, keepalive, dead after): "
          f"{TIMINGS[timing]}", flush=True)
    lab = Lab(Path(tempfile.mkdtemp(prefix="pvcd-bench-scale16-")) / "lab")
    start = time.perf_counter()
    info = lab_up(lab, nodes, timing)
    lab.wait_ready(timeout=300)
    row(f"{nodes}-node lab up and ready", f"{time.perf_counter() - start:.1f} s", "runs")
    try:
        api = Api(info.api, info.token)
        latencies = []
        for _ in range(reads):
            status, _, took = api.call("GET", "/node")
            assert status == 200
            latencies.append(took)
        row(f"GET /node p50, {nodes} nodes", ms(statistics.median(latencies)), "-")
        daemon_rows(lab, idle, f"{nodes}-node lab:")
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", default="1000,10000", help="VM counts, ascending")
    parser.add_argument("--seconds", type=float, default=10.0, help="concurrent-read window")
    parser.add_argument("--idle", type=float, default=30.0, help="idle-CPU window")
    parser.add_argument("--reads", type=int, default=200, help="single-client GETs")
    parser.add_argument("--big-lab", type=int, default=16, help="nodes of the big lab; 0: skip")
    parser.add_argument("--timing", choices=sorted(TIMINGS), default="default",
                        help="the labs' session and keepalive timings (module docstring)")
    args = parser.parse_args(argv)
    counts = sorted(int(c) for c in args.vms.split(",") if c)
    if counts:
        vm_rounds(counts, args.seconds, args.idle, args.reads, args.timing)
    if args.big_lab:
        big_lab(args.big_lab, args.idle, args.reads, args.timing)


if __name__ == "__main__":
    main()
