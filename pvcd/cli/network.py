"""`pvc network`: client networks, their DHCP leases and their firewall ACLs.

A NETWORK argument is a network's VNI or its description, as the API accepts either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from pvcd.cli.client import api_path
from pvcd.cli.completion import complete_networks
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.errors import CliError
from pvcd.cli.output import Column, Row, field, render_fields, render_table, table_of

NETTYPES = ("managed", "bridged")
DIRECTIONS = ("in", "out")


def dhcp_range(net: Row) -> str:
    ip4 = net.get("ip4") or {}
    if not ip4.get("dhcp_flag"):
        return "no"
    return f"{ip4.get('dhcp_start') or '?'}-{ip4.get('dhcp_end') or '?'}"


NETWORK_COLUMNS = [
    Column("VNI", field("vni"), right=True),
    Column("DESCRIPTION", field("description")),
    Column("TYPE", field("type")),
    Column("DOMAIN", field("domain")),
    Column("IPV4 NETWORK", field("ip4", "network")),
    Column("IPV4 GATEWAY", field("ip4", "gateway")),
    Column("DHCPV4", dhcp_range),
    Column("IPV6 NETWORK", field("ip6", "network")),
    Column("IPV6 GATEWAY", field("ip6", "gateway")),
]


def network_table(networks: list[dict[str, Any]]) -> str:
    return render_table(networks, NETWORK_COLUMNS, empty="No networks found.")


def network_details(networks: list[dict[str, Any]]) -> str:
    return "\n\n".join(render_fields([
        ("VNI", net.get("vni")),
        ("Description", net.get("description")),
        ("Type", net.get("type")),
        ("Domain", net.get("domain")),
        ("IPv4 network", field("ip4", "network")(net)),
        ("IPv4 gateway", field("ip4", "gateway")(net)),
        ("DHCPv4", dhcp_range(net)),
        ("IPv6 network", field("ip6", "network")(net)),
        ("IPv6 gateway", field("ip6", "gateway")(net)),
    ]) for net in networks)


def lease_expiry(lease: Row) -> str:
    stamp = lease.get("timestamp")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
    return str(stamp) if stamp is not None else "-"


LEASE_COLUMNS = [
    Column("HOSTNAME", field("hostname")),
    Column("IPV4 ADDRESS", field("ip4_address")),
    Column("MAC ADDRESS", field("mac_address")),
    Column("EXPIRES", lease_expiry),
]

ACL_COLUMNS = [
    Column("DIRECTION", field("direction")),
    Column("ORDER", field("order"), right=True),
    Column("DESCRIPTION", field("description")),
    Column("RULE", field("rule")),
]


def address_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The values `network add` and `network modify` share (modify sends only those given;
    an empty value, e.g. --domain '', clears it)."""
    for decl, help_text in reversed([
        ("--domain", "DNS domain of the network's hosts."),
        ("--ip4-network", "IPv4 network in CIDR form, e.g. 10.100.0.0/24."),
        ("--ip4-gateway", "IPv4 gateway address (the primary serves it)."),
        ("--ip6-network", "IPv6 network in CIDR form."),
        ("--ip6-gateway", "IPv6 gateway address (default <network>::1)."),
        ("--dhcp4-start", "First address of the DHCPv4 pool."),
        ("--dhcp4-end", "Last address of the DHCPv4 pool."),
    ]):
        command = click.option(decl, default=None, help=help_text)(command)
    return click.option("--dhcp4/--no-dhcp4", default=None,
                        help="Serve DHCPv4 on the network.")(command)


def _address_values(options: dict[str, Any]) -> dict[str, Any]:
    return {name: options[name] for name in ("domain", "ip4_network", "ip4_gateway",
                                             "ip6_network", "ip6_gateway", "dhcp4",
                                             "dhcp4_start", "dhcp4_end")}


@click.group()
def network() -> None:
    """Client networks (managed VXLAN or bridged vLAN), leases and ACLs."""


@network.command("list")
@click.argument("limit", required=False)
@format_option
@pass_cli
def network_list(cli: CliContext, limit: str | None) -> None:
    """List networks (LIMIT: a regular expression matched in the descriptions)."""
    cli.emit(cli.client.get("/network", {"limit": limit}), network_table)


@network.command("info")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@format_option
@pass_cli
def network_info(cli: CliContext, name: str) -> None:
    """Show one network."""
    cli.emit(cli.client.get(api_path("network", name)), network_details)


@network.command("add")
@click.argument("vni", type=int)
@click.option("--description", "-d", required=True,
              help="Unique name of the network, without whitespace.")
@click.option("--type", "-t", "nettype", type=click.Choice(NETTYPES), required=True,
              help="managed: a PVC-run VXLAN with gateway, DHCP and ACLs; bridged: a vLAN.")
@address_options
@format_option
@pass_cli
def network_add(cli: CliContext, vni: int, description: str, nettype: str,
                **options: Any) -> None:
    """Add a network with VXLAN ID or vLAN ID VNI."""
    values = {"vni": vni, "description": description, "nettype": nettype,
              **_address_values(options)}
    if values["dhcp4"] is False:
        values["dhcp4"] = None  # absent is off
    cli.message(cli.client.post("/network", values))


@network.command("modify")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@address_options
@format_option
@pass_cli
def network_modify(cli: CliContext, name: str, **options: Any) -> None:
    """Change the given values of a network; the others stay."""
    values = _address_values(options)
    if all(value is None for value in values.values()):
        raise click.UsageError("nothing to change: give at least one option")
    cli.message(cli.client.put(api_path("network", name), values))


@network.command("remove")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@yes_option
@format_option
@pass_cli
def network_remove(cli: CliContext, name: str, yes: bool) -> None:
    """Remove a network (its leases and ACLs go with it)."""
    confirm(yes, f"Remove network '{name}' with its leases and ACLs?")
    cli.message(cli.client.delete(api_path("network", name)))


# --- leases -------------------------------------------------------------------------------


@network.group("lease")
def lease() -> None:
    """DHCP leases: the active ones, and static reservations."""


@lease.command("list")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("limit", required=False)
@click.option("--static", is_flag=True, help="Only static reservations.")
@format_option
@pass_cli
def lease_list(cli: CliContext, name: str, limit: str | None, static: bool) -> None:
    """List the leases of NETWORK (LIMIT: a regular expression matched in MAC addresses)."""
    leases = cli.client.get(api_path("network", name, "lease"),
                            {"limit": limit, "static": static or None})
    cli.emit(leases, table_of(LEASE_COLUMNS, "No leases found."))


@lease.command("info")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("macaddress")
@format_option
@pass_cli
def lease_info(cli: CliContext, name: str, macaddress: str) -> None:
    """Show the lease of MACADDRESS in NETWORK."""
    cli.emit(cli.client.get(api_path("network", name, "dhcp", macaddress)),
             table_of(LEASE_COLUMNS))


@lease.command("add")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("ipaddress")
@click.argument("macaddress")
@click.option("--hostname", help="Host name to hand out with the lease.")
@format_option
@pass_cli
def lease_add(cli: CliContext, name: str, ipaddress: str, macaddress: str,
              hostname: str | None) -> None:
    """Reserve IPADDRESS for MACADDRESS in NETWORK (a static lease)."""
    cli.message(cli.client.post(api_path("network", name, "lease"),
                                {"ipaddress": ipaddress, "macaddress": macaddress,
                                 "hostname": hostname}))


@lease.command("remove")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("macaddress")
@yes_option
@format_option
@pass_cli
def lease_remove(cli: CliContext, name: str, macaddress: str, yes: bool) -> None:
    """Remove the static lease of MACADDRESS from NETWORK."""
    confirm(yes, f"Remove the static lease of {macaddress} from network '{name}'?")
    cli.message(cli.client.delete(api_path("network", name, "dhcp", macaddress)))


# --- ACLs ---------------------------------------------------------------------------------


@network.group("acl")
def acl() -> None:
    """Firewall rules (nftables) of managed networks."""


@acl.command("list")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("limit", required=False)
@click.option("--direction", type=click.Choice(DIRECTIONS), help="Only one direction.")
@format_option
@pass_cli
def acl_list(cli: CliContext, name: str, limit: str | None, direction: str | None) -> None:
    """List the ACLs of NETWORK in chain order (LIMIT: matched in the descriptions)."""
    acls = cli.client.get(api_path("network", name, "acl"),
                          {"limit": limit, "direction": direction})
    cli.emit(acls, table_of(ACL_COLUMNS, "No ACLs found."))


@acl.command("info")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("description")
@format_option
@pass_cli
def acl_info(cli: CliContext, name: str, description: str) -> None:
    """Show the ACL named DESCRIPTION of NETWORK."""
    found = cli.client.get(api_path("network", name, "acl", description))
    if not found:  # the manual: an unknown ACL is an empty document, not a failure
        raise CliError(f"ACL '{description}' not found in network '{name}'")
    cli.emit(found, table_of(ACL_COLUMNS))


@acl.command("add")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("description")
@click.option("--direction", type=click.Choice(DIRECTIONS), required=True,
              help="in: traffic to the VMs; out: traffic from them.")
@click.option("--rule", required=True, help="nftables rule text, e.g. 'tcp dport 22 accept'.")
@click.option("--order", type=click.IntRange(min=0),
              help="Position in the chain, from 0 (default: last).")
@format_option
@pass_cli
def acl_add(cli: CliContext, name: str, description: str, direction: str, rule: str,
            order: int | None) -> None:
    """Add an ACL named DESCRIPTION to NETWORK."""
    cli.message(cli.client.post(api_path("network", name, "acl"),
                                {"description": description, "direction": direction,
                                 "rule": rule, "order": order}))


@acl.command("remove")
@click.argument("name", metavar="NETWORK", shell_complete=complete_networks)
@click.argument("description")
@click.option("--direction", type=click.Choice(DIRECTIONS),
              help="Needed only when both directions have an ACL of that name.")
@yes_option
@format_option
@pass_cli
def acl_remove(cli: CliContext, name: str, description: str, direction: str | None,
               yes: bool) -> None:
    """Remove the ACL named DESCRIPTION from NETWORK."""
    path = api_path("network", name, "acl", description)
    if direction is None:
        found = cli.client.get(path)
        directions = sorted({a["direction"] for a in found}) if isinstance(found, list) else []
        if not directions:
            raise CliError(f"ACL '{description}' not found in network '{name}'")
        if len(directions) > 1:
            raise click.UsageError(f"ACL '{description}' exists in both directions: give "
                                   "--direction")
        direction = directions[0]
    confirm(yes, f"Remove ACL '{description}' ({direction}) from network '{name}'?")
    cli.message(cli.client.delete(path, {"direction": direction}))
