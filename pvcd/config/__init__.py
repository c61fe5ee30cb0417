"""The node's configuration file, read into typed, frozen objects.

Each node reads one YAML file (default `/etc/pvc/pvcd.yaml`) when it starts. The whole file is
checked before the daemon touches ZooKeeper or the host, so a typo stops the node with one message
naming the file and the key (`/etc/pvc/pvcd.yaml: api.port: expected an integer, got 'abc'`) instead
of turning into a confusing failure an hour later.

`schema` holds the sections (what a key means, its default, its checks), `checks` the value
checks, `loader` the generic YAML walk; this package exports what the rest of pvcd uses.
"""

from __future__ import annotations

from pvcd.config.loader import load_config, parse_config
from pvcd.config.schema import (
    ApiSection,
    AuthSection,
    CephDriverSection,
    ClusterSection,
    Config,
    DriversSection,
    FenceTargetSection,
    FencingSection,
    LibvirtDriverSection,
    NetworkDriverSection,
    NetworkSection,
    NetworksSection,
    NodeSection,
    TimingSection,
    TlsSection,
    TokenEntry,
)

DEFAULT_CONFIG_PATH = "/etc/pvc/pvcd.yaml"

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ApiSection",
    "AuthSection",
    "CephDriverSection",
    "ClusterSection",
    "Config",
    "DriversSection",
    "FenceTargetSection",
    "FencingSection",
    "LibvirtDriverSection",
    "NetworkDriverSection",
    "NetworkSection",
    "NetworksSection",
    "NodeSection",
    "TimingSection",
    "TlsSection",
    "TokenEntry",
    "load_config",
    "parse_config",
]
