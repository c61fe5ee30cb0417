"""The `pvc` command tree: every command of the brief exists, has help, and destructive ones
ask first (without a cluster: the refusal happens before any request)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from pvcd.cli.main import cli

EXPECTED = {
    "node": ["list", "info", "primary", "secondary", "flush", "ready", "log"],
    "vm": ["list", "info", "create", "define", "modify", "undefine", "remove", "start",
           "shutdown", "stop", "restart", "migrate", "unmigrate", "move", "dump", "rename",
           "meta", "tag", "log", "snapshot", "device", "backup", "restore", "autobackup"],
    "vm tag": ["get", "add", "remove"],
    "vm snapshot": ["create", "list", "rollback", "remove", "export", "import"],
    "vm backup": ["create", "list", "remove", "restore"],
    "vm autobackup": ["show", "set", "run"],
    "vm device": ["attach", "detach"],
    "network": ["list", "info", "add", "modify", "remove", "lease", "acl"],
    "network lease": ["list", "info", "add", "remove"],
    "network acl": ["list", "info", "add", "remove"],
    "storage": ["status", "util", "request", "osd", "pool", "volume", "snapshot"],
    "storage osd": ["list", "info", "add", "remove", "in", "out", "set", "unset"],
    "storage pool": ["list", "info", "add", "remove"],
    "storage volume": ["list", "info", "add", "resize", "rename", "remove", "clone",
                       "upload"],
    "storage snapshot": ["list", "info", "add", "remove", "rename", "rollback"],
    "task": ["list", "info", "wait"],
    "cluster": ["backup", "restore", "status", "maintenance", "fault"],
    "cluster fault": ["list", "ack", "ack-all", "delete", "delete-all"],
    "connection": ["list", "show"],
}


def group(path: str) -> click.Group:
    command: click.Command = cli
    for name in path.split():
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert isinstance(command, click.Group)
    return command


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_every_command_exists_with_help(path: str) -> None:
    commands = group(path).commands
    assert sorted(commands) == sorted(EXPECTED[path])
    for name, command in commands.items():
        assert command.help or isinstance(command, click.Group), f"{path} {name} has no help"
        result = CliRunner().invoke(cli, [*path.split(), name, "--help"])
        assert result.exit_code == 0, result.output


NO_API = {"PVC_URL": "http://127.0.0.1:9", "PVC_TOKEN": "x", "PVC_CONNECTION": ""}


@pytest.mark.parametrize("args", [
    ["vm", "undefine", "web1"], ["vm", "remove", "web1"], ["network", "remove", "100"],
    ["network", "lease", "remove", "100", "52:54:00:00:00:01"],
    ["network", "acl", "remove", "100", "ssh", "--direction", "in"],
    ["storage", "osd", "remove", "3"], ["storage", "pool", "remove", "vms"],
    ["storage", "volume", "remove", "vms", "disk"],
    ["storage", "snapshot", "remove", "vms", "disk", "snap"],
    ["storage", "snapshot", "rollback", "vms", "disk", "snap"],
    ["cluster", "fault", "delete", "DEAD_NODE_NODE2"], ["cluster", "fault", "delete-all"],
])
def test_destructive_commands_ask_and_no_means_nothing_is_sent(args: list[str]) -> None:
    # the API address is a closed port: any request would fail with exit code 3, not 1
    result = CliRunner().invoke(cli, args, input="n\n", env=NO_API)
    assert result.exit_code == 1, result.output
    assert "[y/N]" in result.output and "Aborted" in result.output


def test_an_unreachable_api_names_the_url_and_exits_3() -> None:
    result = CliRunner().invoke(cli, ["node", "list"], env=NO_API)
    assert result.exit_code == 3
    assert "cannot connect to the PVC API at http://127.0.0.1:9/api/v1" in result.output


def test_format_is_accepted_before_and_after_the_command() -> None:
    for args in (["--format", "json", "connection", "show"],
                 ["connection", "show", "--format", "json"]):
        result = CliRunner().invoke(cli, args, env=NO_API)
        assert result.exit_code == 0, result.output
        assert '"url": "http://127.0.0.1:9/api/v1"' in result.output
        assert '"token": "set"' in result.output and "\"x\"" not in result.output
