"""The node configuration: the example loads, defaults apply, and every error names file and key."""

from pathlib import Path
from typing import Any

import pytest

from pvcd.config import (
    DEFAULT_CONFIG_PATH,
    ApiSection,
    Config,
    NetworkSection,
    TimingSection,
    TokenEntry,
    load_config,
    parse_config,
)
from pvcd.domain.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "pvcd.example.yaml"
SOURCE = "/etc/pvc/pvcd.yaml"


def minimal() -> dict[str, Any]:
    """The smallest valid configuration, as parsed YAML, for tests to modify."""
    return {"node": {"name": "hv1"}, "cluster": {"coordinators": ["10.0.0.1:2181"]}}


def minimal_with(key: str, value: object) -> dict[str, Any]:
    """`minimal()` with `value` at the dotted `key`, adding sections on the way."""
    data = minimal()
    *sections, name = key.split(".")
    target = data
    for section in sections:
        target = target.setdefault(section, {})
    target[name] = value
    return data


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, SOURCE)
    return str(caught.value)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pvcd.yaml"
    path.write_text(text)
    return str(path)


# --- loading -----------------------------------------------------------------------------------


def test_default_path() -> None:
    assert DEFAULT_CONFIG_PATH == "/etc/pvc/pvcd.yaml"


def test_example_loads() -> None:
    config = load_config(str(EXAMPLE))
    assert config.path == str(EXAMPLE)
    assert config.node.name == "hv1"
    assert config.node.coordinator is True
    assert config.cluster.coordinators == ("10.0.0.1:2181", "10.0.0.2:2181", "10.0.0.3:2181")
    assert config.networks.cluster.floating_ip == "10.0.0.254/24"
    assert config.networks.upstream is not None
    assert config.api.tls.enabled is False


def test_defaults_apply_to_omitted_sections_and_keys() -> None:
    config = parse_config(minimal(), SOURCE)
    assert config.path == SOURCE
    assert config.node.coordinator is False
    assert config.cluster.zookeeper_root == "/pvc"
    assert config.cluster.session_timeout == 10.0
    assert config.networks.cluster == NetworkSection()
    assert config.networks.upstream is None
    assert config.api == ApiSection()
    assert (config.api.listen, config.api.port) == ("0.0.0.0", 7370)
    assert config.api.auth.enabled is False and config.api.auth.tokens == ()
    assert config.timing == TimingSection()
    assert config.timing.dead_threshold == 6
    assert config.timing.shutdown_timeout == 90.0
    assert config.drivers.libvirt.uri == "qemu:///system"
    assert config.drivers.libvirt.migration_uri is None


def test_load_file_from_disk(tmp_path: Path) -> None:
    path = write(tmp_path, "node: {name: hv2}\ncluster: {coordinators: ['zk1:2181']}\n")
    config = load_config(path)
    assert isinstance(config, Config)
    assert (config.node.name, config.path) == ("hv2", path)


def test_int_is_accepted_for_float() -> None:
    data = minimal()
    data["timing"] = {"keepalive_interval": 2}
    value = parse_config(data, SOURCE).timing.keepalive_interval
    assert value == 2.0 and isinstance(value, float)


def test_config_is_frozen() -> None:
    config = parse_config(minimal(), SOURCE)
    with pytest.raises(AttributeError):
        config.node.name = "other"  # type: ignore[misc]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read the file: No such file or directory"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("node:\n  name: [hv1\n", "invalid YAML at line 3, column 1: expected ',' or ']'"),
        ("node: {name: a}\nnode: {name: b}\n", "invalid YAML at line 2, column 1: duplicate key"),
        ("", "expected a mapping, got null"),
    ],
)
def test_bad_file_names_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {problem}")


# --- unknown keys, types, required keys --------------------------------------------------------


SECTIONS = ("node, cluster, networks, api, timing, drivers, fencing, tasks, metadata, health, "
            "backup, logging, snapshot")


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("nodes", SECTIONS),
        # set by the loader only
        ("path", SECTIONS),
        ("api.bogus", "listen, port, auth, tls, max_body_size, header_timeout, body_timeout, "
                      "max_connections, max_connections_per_client, task_wait"),
        ("networks.upstream.gateway", "device, network, floating_ip"),
    ],
)
def test_unknown_key(key: str, allowed: str) -> None:
    assert error_of(minimal_with(key, 1)) == f"{SOURCE}: {key}: unknown key (allowed: {allowed})"


def test_unknown_key_in_list_item() -> None:
    data = minimal_with("api.auth.tokens", [{"token": "abcdefgh", "owner": "me"}])
    assert error_of(data) == (
        f"{SOURCE}: api.auth.tokens[0].owner: unknown key (allowed: token, description)"
    )


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("api.port", "abc", "expected an integer, got 'abc'"),
        ("api.port", "7370", "expected an integer, got '7370'"),
        ("api.port", True, "expected an integer, got true"),  # a bool is an int in Python
        ("timing.keepalive_interval", False, "expected a number, got false"),
        ("timing.dead_threshold", 2.5, "expected an integer, got 2.5"),
        ("node.coordinator", "maybe", "expected true or false, got 'maybe'"),
        ("node.name", 12, "expected a string, got 12"),
        ("cluster.coordinators", "zk1:2181", "expected a list, got 'zk1:2181'"),
        ("timing", [1, 2], "expected a mapping, got a list"),
        ("api", None, "expected a mapping, got null"),  # null does not mean "the defaults"
        ("api.listen", None, "expected a string, got null"),
    ],
)
def test_wrong_type(key: str, value: object, problem: str) -> None:
    assert error_of(minimal_with(key, value)) == f"{SOURCE}: {key}: {problem}"


def test_wrong_type_in_list_item() -> None:
    data = minimal_with("api.auth.tokens", [{"token": "abcdefgh"}, {"token": 12345678}])
    assert error_of(data) == f"{SOURCE}: api.auth.tokens[1].token: expected a string, got 12345678"


def test_wrong_type_of_scalar_list_item() -> None:
    data = minimal_with("cluster.coordinators", ["zk1:2181", 2181])
    assert error_of(data) == f"{SOURCE}: cluster.coordinators[1]: expected a string, got 2181"


def test_null_for_an_optional_section_is_allowed() -> None:
    config = parse_config(minimal_with("networks.upstream", None), SOURCE)
    assert config.networks.upstream is None


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"cluster": {"coordinators": ["zk:2181"]}}, "node"),
        ({"node": {"name": "hv1"}}, "cluster"),
        ({"node": {}, "cluster": {"coordinators": ["zk:2181"]}}, "node.name"),
        ({"node": {"name": "hv1"}, "cluster": {}}, "cluster.coordinators"),
        (
            {**minimal(), "api": {"auth": {"tokens": [{"description": "x"}]}}},
            "api.auth.tokens[0].token",
        ),
    ],
)
def test_missing_required_key(data: dict[str, Any], key: str) -> None:
    assert error_of(data) == f"{SOURCE}: {key}: required key is missing"


# --- value checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("node.name", "HV1", "'HV1' is not a valid node name"),
        ("node.name", "-hv1", "'-hv1' is not a valid node name"),
        ("node.name", "hv_1", "'hv_1' is not a valid node name"),
        ("node.name", "", "'' is not a valid node name"),
        ("node.name", "a" * 64, f"{'a' * 64!r} is not a valid node name"),
        ("node.name", "hv1\n", "'hv1\\n' is not a valid node name"),
        ("cluster.coordinators", [], "must not be empty"),
        ("cluster.zookeeper_root", "pvc", "'pvc' is not a valid ZooKeeper path"),
        ("cluster.zookeeper_root", "/pvc/", "'/pvc/' is not a valid ZooKeeper path"),
        ("cluster.zookeeper_root", "/", "'/' is not a valid ZooKeeper path"),
        ("cluster.zookeeper_root", "//pvc", "'//pvc' is not a valid ZooKeeper path"),
        ("cluster.zookeeper_root", "/pvc/../x", "'/pvc/../x' is not a valid ZooKeeper path"),
        ("cluster.zookeeper_root", "/p v c", "'/p v c' is not a valid ZooKeeper path"),
        ("cluster.zookeeper_root", "/zookeeper/a", "'/zookeeper/a' is not a valid ZooKeeper path"),
        ("api.listen", "localhost", "expected an IPv4 or IPv6 address, got 'localhost'"),
        ("networks.cluster.network", "10.0.0.0/33", "expected a network in CIDR notation"),
        ("networks.cluster.floating_ip", "10.0.0.254", "expected an address with a prefix"),
        ("networks.cluster.floating_ip", "10.0.0.300/24", "expected an address with a prefix"),
        ("networks.upstream.floating_ip", "nowhere/24", "expected an address with a prefix"),
        ("networks.cluster.device", "", "'' is not a valid network device name"),
        ("networks.cluster.device", "a-very-long-name", "'a-very-long-name' is not a valid"),
        ("networks.cluster.device", "eth/0", "'eth/0' is not a valid network device name"),
        ("networks.cluster.device", "eth 0", "'eth 0' is not a valid network device name"),
        ("drivers.libvirt.uri", "", "must not be empty"),
        ("drivers.libvirt.migration_uri", "", "must not be empty"),
    ],
)
def test_bad_value(key: str, value: object, problem: str) -> None:
    assert error_of(minimal_with(key, value)).startswith(f"{SOURCE}: {key}: {problem}")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("node.name", "0"),
        ("node.name", "a" * 63),
        ("node.name", "node-01"),
        ("cluster.coordinators", ("zk1.example.org:2181", "[fd00::1]:2181", "10.0.0.1:65535")),
        ("cluster.zookeeper_root", "/clusters/pvc-a.1"),
        ("api.listen", "::"),
        ("networks.cluster.device", "bond0.100"),
        ("networks.cluster.network", "192.168.1.7/24"),  # host bits allowed
        ("networks.cluster.floating_ip", "fd00::10/64"),
    ],
)
def test_good_value(key: str, value: object) -> None:
    data = minimal_with(key, list(value) if isinstance(value, tuple) else value)
    config: Any = parse_config(data, SOURCE)
    for name in key.split("."):
        config = getattr(config, name)
    assert config == value


@pytest.mark.parametrize(
    "bad", ["zk1", "zk1:", ":2181", "zk1:0", "zk1:65536", "::1:2181", "zk 1:1", "zk1:21a"]
)
def test_bad_coordinator(bad: str) -> None:
    data = minimal_with("cluster.coordinators", ["zk0:2181", bad])
    assert error_of(data) == (
        f"{SOURCE}: cluster.coordinators[1]: expected 'host:port' with a port between 1 and"
        f" 65535, got {bad!r}"
    )


@pytest.mark.parametrize(
    ("key", "low", "high", "too_low", "too_high"),
    [
        ("cluster.session_timeout", "0.5", "600", 0.4, 601.0),
        ("api.port", "1", "65535", 0, 65536),
        ("timing.keepalive_interval", "0.05", "600", 0.01, 600.5),
        ("timing.dead_threshold", "1", "100", 0, 101),
        ("timing.resync_interval", "1", "86400", 0.5, 86401.0),
        ("timing.handover_timeout", "0.5", "600", 0.0, 601.0),
        ("timing.shutdown_timeout", "1", "3600", 0.0, 3601.0),
    ],
)
def test_out_of_range(key: str, low: str, high: str, too_low: float, too_high: float) -> None:
    for value in (too_low, too_high):
        assert error_of(minimal_with(key, value)) == (
            f"{SOURCE}: {key}: must be between {low} and {high}, got {value!r}"
        )


def test_nan_is_out_of_range() -> None:
    data = minimal_with("timing.keepalive_interval", float("nan"))
    assert (
        error_of(data)
        == f"{SOURCE}: timing.keepalive_interval: must be between 0.05 and 600, got nan"
    )


@pytest.mark.parametrize(
    ("network", "floating_ip"), [("10.0.0.0/24", "10.0.1.1/24"), ("10.0.0.0/24", "fd00::1/64")]
)
def test_floating_ip_outside_network(network: str, floating_ip: str) -> None:
    data = minimal_with("networks.upstream", {"network": network, "floating_ip": floating_ip})
    assert error_of(data) == (
        f"{SOURCE}: networks.upstream.floating_ip: {floating_ip!r} is not inside network"
        f" {network!r}"
    )


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "must be at least 8 characters"),
        ("short", "must be at least 8 characters"),
        ("has white space", "must not contain whitespace"),
    ],
)
def test_bad_token(token: str, problem: str) -> None:
    data = minimal_with("api.auth.tokens", [{"token": "abcdefgh"}, {"token": token}])
    assert error_of(data) == f"{SOURCE}: api.auth.tokens[1].token: {problem}"


def auth(enabled: bool, secret_key: str, tokens: list[str]) -> dict[str, Any]:
    """`minimal()` with an `api.auth` section."""
    entries = [{"token": token} for token in tokens]
    return minimal_with(
        "api.auth", {"enabled": enabled, "secret_key": secret_key, "tokens": entries}
    )


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        (
            auth(True, "s" * 16, []),
            "api.auth.tokens",
            "at least one token is required when auth is enabled",
        ),
        (
            auth(True, "s" * 15, ["abcdefgh"]),
            "api.auth.secret_key",
            "must be at least 16 characters when auth is enabled",
        ),
        (
            auth(False, "", ["abcdefgh", "12345678", "abcdefgh"]),
            "api.auth.tokens[2].token",
            "duplicate token (same as tokens[0])",
        ),
    ],
)
def test_bad_auth(data: dict[str, Any], key: str, problem: str) -> None:
    assert error_of(data) == f"{SOURCE}: {key}: {problem}"


def test_auth_enabled_and_complete() -> None:
    data = auth(True, "s" * 16, ["abcdefgh"])
    data["api"]["auth"]["tokens"][0]["description"] = "ops"
    tokens = parse_config(data, SOURCE).api.auth.tokens
    assert tokens == (TokenEntry(token="abcdefgh", description="ops"),)


def tls(tmp_path: Path, *, files: tuple[str, ...], create: tuple[str, ...]) -> dict[str, Any]:
    """`minimal()` with TLS enabled, naming `files` (of cert_file, key_file) and creating
    `create`."""
    section: dict[str, object] = {"enabled": True}
    for name in files:
        path = tmp_path / name
        section[name] = str(path)
        if name in create:
            path.write_text("PEM")
    return minimal_with("api.tls", section)


def test_tls_enabled_without_files(tmp_path: Path) -> None:
    data = tls(tmp_path, files=(), create=())
    assert error_of(data) == f"{SOURCE}: api.tls.cert_file: required when tls is enabled"


def test_tls_enabled_without_key_file(tmp_path: Path) -> None:
    data = tls(tmp_path, files=("cert_file",), create=("cert_file",))
    assert error_of(data) == f"{SOURCE}: api.tls.key_file: required when tls is enabled"


def test_tls_enabled_with_missing_file(tmp_path: Path) -> None:
    data = tls(tmp_path, files=("cert_file", "key_file"), create=("cert_file",))
    missing = str(tmp_path / "key_file")
    assert error_of(data) == f"{SOURCE}: api.tls.key_file: no such file: {missing!r}"


def test_tls_enabled_with_files(tmp_path: Path) -> None:
    files = ("cert_file", "key_file")
    config = parse_config(tls(tmp_path, files=files, create=files), SOURCE)
    assert config.api.tls.enabled is True
    assert config.api.tls.key_file == str(tmp_path / "key_file")


def test_error_from_file_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "node: {name: hv1}\ncluster: {coordinators: ['zk:2181']}\napi: {port: abc}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: api.port: expected an integer, got 'abc'"
