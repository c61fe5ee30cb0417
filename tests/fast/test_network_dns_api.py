"""The API's part of DNS across networks (extensions.md §10): `/network/<n>/dhcp` is `/lease`
under the manual's name (§10.1), and a managed network's domain may not equal, contain or lie
inside another's (§10.2.4): such a POST or PUT is a 510 that changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.api import ApiClient, running_api
from tests.fakes.nodes import SimCluster


@pytest.fixture
def api(sim: SimCluster) -> Iterator[ApiClient]:
    sim.add_node("node1")
    sim.step()  # node1 takes the primary role
    with running_api(sim.state, sim.clock) as client:
        yield client


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def add(api: ApiClient, vni: int, **values: str) -> Any:
    return api.post("/network", data={"vni": str(vni), "description": f"net{vni}",
                                      "nettype": "managed",
                                      "ip4_network": f"10.{vni}.0.0/24",
                                      "ip4_gateway": f"10.{vni}.0.1", **values})


@pytest.mark.parametrize("domain", ["net10.example.org", "NET10.Example.ORG.",
                                    "example.org", "a.net10.example.org"])
def test_an_overlapping_domain_is_refused_on_post(api: ApiClient, domain: str) -> None:
    ok(add(api, 10, domain="net10.example.org"))
    before = ok(api.get("/network"))
    refused = add(api, 11, domain=domain)
    assert refused.status_code == 510, refused.text
    message = refused.json()["message"]
    assert "net10" in message and "may not equal, contain or lie inside" in message
    assert ok(api.get("/network")) == before


def test_an_overlapping_domain_is_refused_on_put_and_others_are_fine(api: ApiClient) -> None:
    ok(add(api, 10, domain="a.example.org"))
    ok(add(api, 11, domain="b.example.org"))
    ok(api.post("/network", data={"vni": "12", "description": "vlan12", "nettype": "bridged",
                                  "domain": "a.example.org"}))  # bridged: takes no part
    before = ok(api.get("/network"))
    refused = api.call("PUT", "/network/net11", data={"domain": "x.a.example.org"})
    assert refused.status_code == 510 and "net10" in refused.json()["message"]
    assert ok(api.get("/network")) == before
    # its own domain again, another one, or none: fine
    ok(api.call("PUT", "/network/net11", data={"domain": "b.example.org"}))
    ok(api.call("PUT", "/network/net11", data={"domain": "c.example.org"}))
    ok(api.call("PUT", "/network/net11", data={"domain": ""}))
    assert ok(api.get("/network/net11"))[0]["domain"] is None


def test_dhcp_is_the_lease_list_under_the_manuals_name(api: ApiClient) -> None:
    ok(add(api, 10, dhcp4="yes", dhcp4_start="10.10.0.50", dhcp4_end="10.10.0.99"))
    # POST on either path adds a static lease; both paths list the same objects
    ok(api.post("/network/net10/dhcp", data={"macaddress": "52:54:00:10:00:01",
                                             "ipaddress": "10.10.0.5", "hostname": "one"}))
    ok(api.post("/network/net10/lease", data={"macaddress": "52:54:00:10:00:02",
                                              "ipaddress": "10.10.0.6"}))
    listed = ok(api.get("/network/net10/lease"))
    assert [le["mac_address"] for le in listed] == ["52:54:00:10:00:01", "52:54:00:10:00:02"]
    for params in ({}, {"limit": "00:01$"}, {"static": "true"}, {"static": "false"},
                   {"limit": "^ff"}):
        assert ok(api.get("/network/net10/dhcp", params=params)) == \
            ok(api.get("/network/10/lease", params=params))
    assert ok(api.get("/network/net10/dhcp", params={"limit": "00:01$"})) == listed[:1]
    # the same refusals, the same messages
    for path in ("/network/net10/dhcp", "/network/net10/lease"):
        duplicate = api.post(path, data={"macaddress": "52:54:00:10:00:03",
                                         "ipaddress": "10.10.0.5"})
        assert duplicate.status_code == 510 and "already reserved" in \
            duplicate.json()["message"]
        bad = api.get(path, params={"limit": "("})
        assert bad.status_code == 510
    assert api.get("/network/ghost/dhcp").status_code == 510
    assert ok(api.get("/network/net10/lease")) == listed
