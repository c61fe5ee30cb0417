"""One real `pvcd run` process for the daemon's session tests: a coordinator named `name` on a
`test:///` libvirt of its own, its config and log in `folder`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pvcd.lab.zookeeper import free_port

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def start_daemon(folder: Path, zk_port: int, root: str, name: str, session_timeout: float,
                 timing: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
    state = folder / "libvirt.xml"
    state.write_text("<node>\n</node>\n")
    config: dict[str, Any] = {
        "node": {"name": name, "coordinator": True},
        "cluster": {"coordinators": [f"127.0.0.1:{zk_port}"], "zookeeper_root": root,
                    "session_timeout": session_timeout},
        "api": {"listen": "127.0.0.1", "port": free_port(), "auth": {"enabled": False}},
        "drivers": {"libvirt": {"uri": f"test://{state}"}},
    }
    if timing:
        config["timing"] = timing
    path = folder / "pvcd.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(folder / "pvcd.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "pvcd", "run", "--config", str(path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={"PYTHONPATH": PACKAGE_PARENT, "PATH": "/usr/bin:/bin"})
