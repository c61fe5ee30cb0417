"""Which API `pvc` talks to: the config file, the environment, --connection and --lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvcd.cli.connection import (
    config_path,
    lab_connection,
    load_connections,
    normalise_url,
    resolve_connection,
)
from pvcd.cli.errors import ConfigProblem

CONFIG = """\
default: lab
connections:
  lab:
    url: http://127.0.0.1:7370
    token: lab-token
  prod:
    url: https://pvc.example.org:7370/api/v1/
    token: prod-token
    ca_file: ~/ca.pem
  insecure:
    url: pvc.test:7370
    verify: false
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "connections.yaml").write_text(CONFIG)
    return {"PVC_CONFIG": str(tmp_path / "connections.yaml"), "HOME": str(tmp_path)}


def write_lab(folder: Path, api: str = "http://127.0.0.1:5000/api/v1", tls: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "lab.json").write_text(json.dumps({"api": api, "token": "t0k", "nodes": []}))
    if tls:
        (folder / "tls").mkdir()
        (folder / "tls" / "cert.pem").write_text("cert")
    return folder


def test_urls_get_the_api_path_and_a_scheme() -> None:
    assert normalise_url("127.0.0.1:7370") == "http://127.0.0.1:7370/api/v1"
    assert normalise_url("https://h:1/") == "https://h:1/api/v1"
    assert normalise_url("https://h:1/api/v1/") == "https://h:1/api/v1"
    with pytest.raises(ConfigProblem, match="not an http"):
        normalise_url("ftp://h")


def test_config_path_follows_pvc_config_then_xdg_then_home(tmp_path: Path) -> None:
    assert config_path({"PVC_CONFIG": "/etc/x.yaml"}) == Path("/etc/x.yaml")
    assert config_path({"XDG_CONFIG_HOME": "/xdg", "HOME": "/h"}) == \
        Path("/xdg/pvc/connections.yaml")
    assert config_path({"HOME": "/h"}) == Path("/h/.config/pvc/connections.yaml")


def test_the_default_connection(env: dict[str, str]) -> None:
    connection = resolve_connection(None, None, env)
    assert connection.name == "lab"
    assert connection.url == "http://127.0.0.1:7370/api/v1"
    assert connection.token == "lab-token"
    assert "connection 'lab'" in connection.source


def test_a_named_connection_with_tls_settings(env: dict[str, str], tmp_path: Path) -> None:
    prod = resolve_connection(None, "prod", env)
    assert prod.url == "https://pvc.example.org:7370/api/v1"
    assert prod.ca_file == str(Path("~/ca.pem").expanduser())
    insecure = resolve_connection(None, "insecure", env)
    assert insecure.verify is False and insecure.token is None


def test_pvc_connection_names_one_and_the_option_wins(env: dict[str, str]) -> None:
    env["PVC_CONNECTION"] = "prod"
    assert resolve_connection(None, None, env).name == "prod"
    assert resolve_connection(None, "insecure", env).name == "insecure"


def test_the_environment_overrides_token_and_tls(env: dict[str, str]) -> None:
    env.update(PVC_TOKEN="env-token", PVC_VERIFY="no", PVC_CA_FILE="/ca.pem")
    connection = resolve_connection(None, "prod", env)
    assert connection.token == "env-token" and connection.token_origin() == "PVC_TOKEN"
    assert connection.verify is False and connection.ca_file == "/ca.pem"
    assert connection.url == "https://pvc.example.org:7370/api/v1"


def test_pvc_url_alone_never_borrows_a_token_from_the_file(env: dict[str, str]) -> None:
    env["PVC_URL"] = "http://elsewhere:7370"
    connection = resolve_connection(None, None, env)
    assert connection.url == "http://elsewhere:7370/api/v1"
    assert connection.token is None
    env["PVC_TOKEN"] = "t"
    assert resolve_connection(None, None, env).token == "t"


def test_lab_wins_and_ignores_the_environment(env: dict[str, str], tmp_path: Path) -> None:
    lab = write_lab(tmp_path / "lab")
    env.update(PVC_URL="http://elsewhere", PVC_TOKEN="env-token", PVC_CONNECTION="prod")
    connection = resolve_connection(str(lab), "prod", env)
    assert connection.url == "http://127.0.0.1:5000/api/v1"
    assert connection.token == "t0k"
    assert connection.ca_file is None
    assert str(lab / "lab.json") in connection.source


def test_a_tls_lab_trusts_its_own_certificate(tmp_path: Path) -> None:
    lab = write_lab(tmp_path / "lab", api="https://127.0.0.1:5000/api/v1", tls=True)
    assert lab_connection(lab).ca_file == str((lab / "tls" / "cert.pem").resolve())


def test_a_missing_lab_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigProblem, match="is a lab up"):
        lab_connection(tmp_path / "nolab")


def test_nothing_configured_explains_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigProblem, match="--lab DIR, --connection NAME, set PVC_URL"):
        resolve_connection(None, None, {"PVC_CONFIG": str(tmp_path / "none.yaml")})


def test_unknown_connection_lists_the_known_ones(env: dict[str, str]) -> None:
    with pytest.raises(ConfigProblem, match=r"known: insecure, lab, prod"):
        resolve_connection(None, "staging", env)


def test_several_connections_and_no_default(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("connections:\n  a: {url: 'h:1'}\n  b: {url: 'h:2'}\n")
    with pytest.raises(ConfigProblem, match="no 'default'"):
        resolve_connection(None, None, {"PVC_CONFIG": str(path)})
    path.write_text("connections:\n  only: {url: 'h:1'}\n")
    assert resolve_connection(None, None, {"PVC_CONFIG": str(path)}).name == "only"


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "expected a mapping"),
    ("connections: {a: {url: 'h:1'}}\nextra: 1\n", "unknown key"),
    ("connections: {a: {}}\n", r"connections\.a\.url: missing"),
    ("connections: {a: {url: 'h:1', tokn: x}}\n", "unknown key.*tokn"),
    ("connections: {a: {url: 'h:1', token: 123}}\n", "must be a string"),
    ("connections: {a: {url: 'h:1', verify: 'maybe'}}\n", "true or false"),
    ("default: b\nconnections: {a: {url: 'h:1'}}\n", "'default' names 'b'"),
    ("connections: [\n", "not valid YAML"),
])
def test_config_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigProblem, match=message) as caught:
        load_connections(path)
    assert str(path) in str(caught.value)


def test_a_missing_config_file_is_empty(tmp_path: Path) -> None:
    assert load_connections(tmp_path / "none.yaml").connections == {}
