"""Which API the `pvc` client talks to, and with which token and TLS settings.

A connection comes from exactly one place, chosen in this order (the first that applies wins):

1. `--lab DIR`: everything from `DIR/lab.json` (and `DIR/tls/cert.pem` as the CA when the lab
   serves TLS). The environment is not consulted: a lab describes itself completely.
2. `--connection NAME`, else `$PVC_CONNECTION`: the named connection of the config file.
3. `$PVC_URL`: a connection from the environment alone (the config file is not read, so a token
   from the file is never sent to a URL the file does not name).
4. The config file's `default` connection (or its only one).

In 2 to 4, `$PVC_TOKEN`, `$PVC_CA_FILE` and `$PVC_VERIFY` override the token and TLS settings.
The config file is `$PVC_CONFIG`, else `$XDG_CONFIG_HOME/pvc/connections.yaml`, else
`~/.config/pvc/connections.yaml`:

    default: lab
    connections:
      lab:
        url: http://127.0.0.1:7370/api/v1
        token: 0b9e...
      prod:
        url: https://pvc.example.org:7370      # /api/v1 is added when the path is empty
        token: ...
        ca_file: /etc/pvc/ca.pem               # or `verify: false` (not recommended)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from pvcd.cli.errors import ConfigProblem

API_PATH = "/api/v1"
LAB_FILE = "lab.json"
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Connection:
    url: str  # the API's base URL, ending in /api/v1
    token: str | None = None
    verify: bool = True
    ca_file: str | None = None
    source: str = ""  # where it came from, in words, for error messages
    name: str | None = None
    token_source: str = ""  # where the token came from, when not from `source`

    def token_origin(self) -> str:
        return self.token_source or self.source


@dataclass(frozen=True)
class ConnectionsFile:
    path: Path
    default: str | None
    connections: dict[str, Connection]

    def default_name(self) -> str | None:
        if self.default is not None:
            return self.default
        if len(self.connections) == 1:
            return next(iter(self.connections))
        return None


def config_path(env: Mapping[str, str]) -> Path:
    if env.get("PVC_CONFIG"):
        return Path(env["PVC_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "pvc" / "connections.yaml"


def normalise_url(url: str) -> str:
    """Accept `host:port`, `http://host:port` or the full base URL; return the base URL."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigProblem(f"'{url}' is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    if path == "":
        path = API_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def load_connections(path: Path) -> ConnectionsFile:
    """The config file; a missing file is an empty one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ConnectionsFile(path, None, {})
    except OSError as exc:
        raise ConfigProblem(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigProblem(f"{path}: not valid YAML: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigProblem(f"{path}: expected a mapping with 'connections'")
    unknown = set(doc) - {"default", "connections"}
    if unknown:
        raise ConfigProblem(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                               "expected 'default' and 'connections'")
    raw = doc.get("connections") or {}
    if not isinstance(raw, dict):
        raise ConfigProblem(f"{path}: 'connections' must be a mapping of name to connection")
    connections = {str(name): _connection_entry(path, str(name), entry)
                   for name, entry in raw.items()}
    default = doc.get("default")
    if default is not None:
        default = str(default)
        if default not in connections:
            raise ConfigProblem(f"{path}: 'default' names '{default}', which is not in "
                                   "'connections'")
    return ConnectionsFile(path, default, connections)


def _connection_entry(path: Path, name: str, entry: Any) -> Connection:
    where = f"{path}: connections.{name}"
    if not isinstance(entry, dict):
        raise ConfigProblem(f"{where}: expected a mapping with 'url'")
    unknown = set(entry) - {"url", "token", "verify", "ca_file"}
    if unknown:
        raise ConfigProblem(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                               "expected url, token, verify, ca_file")
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigProblem(f"{where}.url: missing (the API's URL, e.g. "
                               "https://pvc.example.org:7370)")
    try:
        url = normalise_url(url)
    except ConfigProblem as exc:
        raise ConfigProblem(f"{where}.url: {exc}") from None
    token = entry.get("token")
    if token is not None and not isinstance(token, str):
        raise ConfigProblem(f"{where}.token: must be a string (quote it)")
    verify = entry.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigProblem(f"{where}.verify: must be true or false")
    ca_file = entry.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise ConfigProblem(f"{where}.ca_file: must be a path")
    return Connection(url=url, token=token or None, verify=verify,
                      ca_file=str(Path(ca_file).expanduser()) if ca_file else None,
                      source=f"connection '{name}' in {path}", name=name)


def lab_connection(workdir: str | Path) -> Connection:
    folder = Path(workdir).expanduser()
    path = folder / LAB_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigProblem(f"{path} does not exist: is a lab up in {folder}? "
                               f"(pvcd lab up --workdir {folder})") from None
    except (OSError, ValueError) as exc:
        raise ConfigProblem(f"{path}: cannot read the lab description: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("api"), str):
        raise ConfigProblem(f"{path}: no 'api' URL in the lab description")
    url = normalise_url(doc["api"])
    cert = folder / "tls" / "cert.pem"
    ca_file = str(cert.resolve()) if url.startswith("https:") and cert.exists() else None
    token = doc.get("token")
    return Connection(url=url, token=str(token) if token else None, ca_file=ca_file,
                      source=f"lab {path}", name=None)


def resolve_connection(lab: str | None, name: str | None,
                       env: Mapping[str, str]) -> Connection:
    """The connection to use (see the module docstring for the order)."""
    if lab:
        return lab_connection(lab)
    name = name or env.get("PVC_CONNECTION") or None
    if name is not None:
        config = load_connections(config_path(env))
        if name not in config.connections:
            known = ", ".join(sorted(config.connections)) or "none"
            raise ConfigProblem(f"no connection named '{name}' in {config.path} "
                                   f"(known: {known})")
        return _with_environment(config.connections[name], env)
    if env.get("PVC_URL"):
        try:
            url = normalise_url(env["PVC_URL"])
        except ConfigProblem as exc:
            raise ConfigProblem(f"PVC_URL: {exc}") from None
        return _with_environment(Connection(url=url, source="the environment (PVC_URL)"), env)
    config = load_connections(config_path(env))
    default = config.default_name()
    if default is None:
        if config.connections:
            raise ConfigProblem(f"{config.path} has several connections and no 'default': "
                                   "choose one with --connection NAME")
        raise ConfigProblem("no API to talk to: use --lab DIR, --connection NAME, set "
                               f"PVC_URL (and PVC_TOKEN), or add a connection to {config.path}")
    return _with_environment(config.connections[default], env)


def _with_environment(connection: Connection, env: Mapping[str, str]) -> Connection:
    changes: dict[str, Any] = {}
    if env.get("PVC_TOKEN"):
        changes["token"] = env["PVC_TOKEN"]
        changes["token_source"] = "PVC_TOKEN"
    if env.get("PVC_CA_FILE"):
        changes["ca_file"] = str(Path(env["PVC_CA_FILE"]).expanduser())
    if env.get("PVC_VERIFY"):
        changes["verify"] = env["PVC_VERIFY"].strip().lower() not in _FALSE
    return dataclasses.replace(connection, **changes) if changes else connection


def default_environment() -> Mapping[str, str]:
    return os.environ
