"""A configuration file that holds secrets is refused when every user can read it; one without
secrets, or readable only by its owner (and group), loads (docs/security.md, "Least
privilege")."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pvcd.config import load_config
from pvcd.domain.errors import ConfigError

BASE = {"node": {"name": "hv1"}, "cluster": {"coordinators": ["10.0.0.1:2181"]}}
WITH_TOKENS = {**BASE, "api": {"auth": {"enabled": True, "secret_key": "s" * 16,
                                        "tokens": [{"token": "t" * 16, "description": "ops"}]}}}
WITH_IPMI = {**BASE, "fencing": {"targets": [{"node": "hv2", "driver": "ipmi",
                                              "ipmi_host": "10.0.0.9", "ipmi_user": "admin",
                                              "ipmi_password": "hunter2"}]}}
WITH_ZOOKEEPER = {**BASE, "cluster": {**BASE["cluster"], "zookeeper_user": "pvcd",  # type: ignore[dict-item]
                                      "zookeeper_password": "a-long-secret"}}


def config_file(tmp_path: Path, data: dict[str, object], mode: int) -> str:
    path = tmp_path / "pvcd.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize(("data", "secrets"), [
    (WITH_TOKENS, "api.auth.secret_key, api.auth.tokens"),
    (WITH_IPMI, "fencing.targets[0].ipmi_password"),
    (WITH_ZOOKEEPER, "cluster.zookeeper_password"),
])
def test_a_world_readable_file_with_secrets_is_refused_naming_file_keys_and_mode(
        tmp_path: Path, data: dict[str, object], secrets: str) -> None:
    path = config_file(tmp_path, data, 0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: the file holds secrets ({secrets}) and every user of this machine can read it "
        f"(mode 0644): make it readable by root alone, `chmod 0600 {path}` (or 0640 with a "
        "group of its own)")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_file_with_secrets_readable_by_owner_and_group_only_loads(tmp_path: Path,
                                                                    mode: int) -> None:
    config = load_config(config_file(tmp_path, WITH_TOKENS, mode))
    assert config.api.auth.tokens[0].description == "ops"


def test_a_world_readable_file_without_secrets_loads(tmp_path: Path) -> None:
    data = {**BASE, "api": {"auth": {"enabled": False, "secret_key": "", "tokens": []}},
            "fencing": {"targets": []}}
    assert load_config(config_file(tmp_path, data, 0o644)).node.name == "hv1"


def test_a_key_that_names_a_secrets_file_is_no_secret_itself(tmp_path: Path) -> None:
    from pvcd.config.loader import secret_keys

    assert secret_keys({"zookeeper": {"password_file": "/etc/pvc/zk.secret"}}) == []
    assert secret_keys({"zookeeper": {"auth": {"password": "x"}}}) == ["zookeeper.auth.password"]
