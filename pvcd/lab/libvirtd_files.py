"""The files of one lab libvirtd instance: where they live and what its configuration says.

Each instance keeps everything under `<workdir>/<name>/`: the five folders bind-mounted over
libvirtd's fixed paths (`BIND_TARGETS`), its sockets, pid and state files, and its logs. The
settings and why they are so: pvcd.lab.libvirtd and docs/lab-qemu.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The host folders libvirtd uses, and the folder under the instance's root that replaces each.
BIND_TARGETS: dict[str, str] = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
MIGRATION_PORT_BASE = 49152
MIGRATION_PORTS_PER_NODE = 16
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the trailing NUL


@dataclass(frozen=True)
class InstancePaths:
    """Where one instance keeps its configuration, state, sockets and logs."""

    root: Path

    def bind_source(self, key: str) -> Path:
        return self.root / key

    @property
    def sock_dir(self) -> Path:
        return self.root / "sock"

    @property
    def socket(self) -> Path:
        return self.sock_dir / "libvirt-sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "libvirtd.pid"

    @property
    def state_file(self) -> Path:
        """The running instance (pids, namespaces, ports), for another process to stop it."""
        return self.root / "instance.json"

    @property
    def host_uuid_file(self) -> Path:
        return self.root / "host-uuid"

    @property
    def console_log(self) -> Path:
        """libvirtd's and tini's stdout/stderr."""
        return self.root / "console.log"

    @property
    def daemon_log(self) -> Path:
        return self.root / "log" / "libvirtd.log"


def libvirtd_conf(paths: InstancePaths, host_uuid: str, tcp_port: int | None) -> str:
    lines = [
        f'host_uuid = "{host_uuid}"',
        f'unix_sock_dir = "{paths.sock_dir}"',
        'unix_sock_rw_perms = "0700"',  # root only: auth none below
        'unix_sock_ro_perms = "0700"',
        'unix_sock_admin_perms = "0700"',
        'auth_unix_rw = "none"',  # no polkit daemon here
        'auth_unix_ro = "none"',
        "listen_tls = 0",
        f'log_outputs = "3:file:{paths.daemon_log}"',
    ]
    if tcp_port is not None:
        # Only for peers on the same machine: loopback, no authentication.
        lines += [
            "listen_tcp = 1",
            f'tcp_port = "{tcp_port}"',
            'listen_addr = "127.0.0.1"',
            'auth_tcp = "none"',
        ]
    return "\n".join(lines) + "\n"


def qemu_conf(migration_ports: tuple[int, int]) -> str:
    low, high = migration_ports
    lines = [
        'user = "root"',
        'group = "root"',
        'security_driver = "none"',
        "dynamic_ownership = 0",  # don't chown the guest's kernel and logs
        "remember_owner = 0",  # uses xattrs
        "cgroup_controllers = [ ]",  # no systemd, cgroup v2 delegation not set up
        "namespaces = [ ]",  # keep QEMU in the instance's mount namespace (and findable)
        'stdio_handler = "file"',  # no virtlogd daemon
        # migration_address/migration_host may not name a local address (libvirt rejects it):
        # callers pass listen address and URI per migration (`migration_params`).
        f"migration_port_min = {low}",
        f"migration_port_max = {high}",
    ]
    return "\n".join(lines) + "\n"
