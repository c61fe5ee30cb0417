"""Guest input in DHCP leases: what of a reported lease is kept (`guest_lease`), through the
hook's events, the journal, and the cluster's copy handed back to the next dnsmasq. Nothing a
guest can send raises."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from pvcd.drivers import dnsmasq_leasehook as hook
from pvcd.drivers.dnsmasq import DnsmasqConfig, DnsmasqInstance, Lease
from pvcd.drivers.dnsmasq_leasehook import guest_hostname, guest_lease

MAC = "52:54:00:aa:00:01"
ODD_NAMES = ["web_1", "host-", "a" * 63, "a" * 64, "x" * 300, "héllo", "日本", "", " ",
             "-lead", "_lead", "two words", "a.b", "tab\there", "new\nline", "*", "a;b",
             "\x00", "name\u200b"]


@pytest.mark.parametrize("name", ["web1", "web_1", "host-", "H0st", "a" * 63, "9lives"])
def test_names_dnsmasq_serves_are_kept(name: str) -> None:
    assert guest_hostname(name) == name


@pytest.mark.parametrize("name", ["", "a" * 64, "héllo", "日本", "-lead", "_lead", "a b",
                                  "a.b", "new\nline", "web1\n", "*", "\x00", None, 12, ["x"]])
def test_other_names_are_dropped(name: object) -> None:
    assert guest_hostname(name) is None


def test_a_lease_keeps_its_address_when_only_the_name_is_bad() -> None:
    assert guest_lease("52:54:00:AA:00:01", "10.0.0.5", "日本", 0) == \
        Lease(MAC, "10.0.0.5", None, 0)
    assert guest_lease(MAC, "10.0.0.5", "web_1", "1700000000") == \
        Lease(MAC, "10.0.0.5", "web_1", 1700000000)


@pytest.mark.parametrize("mac, ip, expires", [
    ("06-52:54:00:aa:00:01", "10.0.0.5", 0),  # a non-Ethernet hardware type, as dnsmasq says it
    ("", "10.0.0.5", 0),
    ("52:54:00:aa:00:01/..", "10.0.0.5", 0),
    (None, "10.0.0.5", 0),
    (MAC, "fd00::5", 0),
    (MAC, "10.0.0.5/24", 0),
    (MAC, "1" * 5000, 0),
    (MAC, None, 0),
    (MAC, "10.0.0.5", -1),
    (MAC, "10.0.0.5", "9" * 5000),
    (MAC, "10.0.0.5", "²"),
    (MAC, "10.0.0.5", 2**64),
    (MAC, "10.0.0.5", True),
    (MAC, "10.0.0.5", 1.5),
])
def test_a_lease_that_cannot_be_kept_is_left_out(mac: object, ip: object,
                                                 expires: object) -> None:
    assert guest_lease(mac, ip, "web", expires) is None


def init_lines(lease_dir: Path) -> list[str]:
    """What dnsmasq reads at start: the hook's `init` output, its lease-file format."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert hook.main(["init"], str(lease_dir)) == 0
    return out.getvalue().splitlines()


def test_the_hook_records_every_odd_name_and_hands_back_only_safe_lines(tmp_path: Path) -> None:
    env = {"DNSMASQ_LEASE_EXPIRES": "4000000000"}
    for index, name in enumerate(ODD_NAMES):
        assert hook.main(["add", f"52:54:00:aa:01:{index:02x}", f"10.0.1.{index + 10}", name],
                         str(tmp_path), env) == 0
    leases = hook.read_leases(str(tmp_path), now=0)
    assert len(leases) == len(ODD_NAMES)  # every lease kept
    names = {le.hostname for le in leases}
    assert names == {"web_1", "host-", "a" * 63, None}
    for line in init_lines(tmp_path):
        expiry, _mac, _ip, name, client_id = line.split(" ")  # five fields, always
        assert expiry == "4000000000" and client_id == "*"
        assert name == "*" or guest_hostname(name) == name


def test_a_non_ethernet_client_is_served_but_not_kept(tmp_path: Path) -> None:
    hook.main(["add", MAC, "10.0.1.5", "first"], str(tmp_path), {})
    # the same address, now leased to a client whose hardware address we cannot name a znode by
    hook.main(["old", "06-01:02:03:04:05:06", "10.0.1.5", "second"], str(tmp_path), {})
    hook.main(["add", "20-" + "ab:" * 19 + "cd", "10.0.1.6", "ib"], str(tmp_path), {})
    assert hook.read_leases(str(tmp_path), now=0) == []


def test_a_tampered_journal_line_is_read_as_the_rule_allows(tmp_path: Path) -> None:
    lines = [{"event": "add", "mac": MAC, "ip": "10.0.1.5", "hostname": "bad name",
              "expires": 0},
             {"event": "add", "mac": "zz", "ip": "10.0.1.6", "hostname": "x", "expires": 0},
             {"event": "add", "mac": MAC.replace("01", "02"), "ip": "10.0.1.7",
              "hostname": "ok", "expires": "soon"}]
    (tmp_path / hook.JOURNAL).write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert hook.read_leases(str(tmp_path), now=0) == [Lease(MAC, "10.0.1.5", None, 0)]


def test_known_leases_with_odd_names_never_refuse_the_start(tmp_path: Path) -> None:
    """The cluster's copy, as an older pvcd (or anyone) stored it, handed to the next dnsmasq:
    the whole list used to be refused for one `web_1`, and dnsmasq did not start."""
    instance = DnsmasqInstance(DnsmasqConfig(interface="vmbr100", state_dir=tmp_path,
                                             ip4_network="10.0.0.0/24",
                                             ip4_gateway="10.0.0.1"))
    known = [Lease(f"52:54:00:aa:02:{i:02x}", f"10.0.0.{i + 10}", name, 0)
             for i, name in enumerate(ODD_NAMES)]
    known.append(Lease("06-52:54:00:aa:02:ff", "10.0.0.200", "x", 0))
    known.append(Lease(MAC, "not an address", "x", 0))
    instance.set_known_leases(known)
    kept = hook.read_leases(str(tmp_path), now=0)
    assert [le.mac for le in kept] == [le.mac for le in known[:len(ODD_NAMES)]]
    assert {le.hostname for le in kept} == {"web_1", "host-", "a" * 63, None}
