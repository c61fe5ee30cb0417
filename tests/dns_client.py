"""DNS questions asked from inside a network namespace (a guest's, a node's), with dnspython,
for the DNS tests and `bench/dns.py`: what a guest's resolver would get."""

from __future__ import annotations

import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename

from pvcd.drivers.netns import run_in_netns


@dataclass(frozen=True)
class Answer:
    rcode: str  # NOERROR, NXDOMAIN, REFUSED, ... or TIMEOUT, UNREACHABLE
    values: tuple[str, ...]  # addresses (A/AAAA) or names (PTR), without the trailing dot
    ttls: tuple[int, ...]


def ask(netns: str | None, server: str, name: str, rdtype: str = "A",
        timeout: float = 1.0) -> Answer:
    """One question over UDP; `rdtype` PTR takes an address as `name`."""
    qname = dns.reversename.from_address(name) if rdtype == "PTR" else name
    query = dns.message.make_query(qname, rdtype)

    def work() -> Answer:
        try:
            response = dns.query.udp(query, server, timeout=timeout)
        except dns.exception.Timeout:
            return Answer("TIMEOUT", (), ())
        except OSError as exc:  # e.g. no route yet to a gateway that is coming up
            return Answer(f"UNREACHABLE ({exc.strerror})", (), ())
        wanted = dns.rdatatype.from_text(rdtype)
        rrsets = [rrset for rrset in response.answer if rrset.rdtype == wanted]
        values = tuple(sorted(rdata.to_text().rstrip(".") for rrset in rrsets
                              for rdata in rrset))
        return Answer(dns.rcode.to_text(response.rcode()), values,
                      tuple(rrset.ttl for rrset in rrsets))

    return run_in_netns(netns, work, timeout=timeout + 5)


def resolves(netns: str | None, server: str, name: str, expected: str, rdtype: str = "A",
             timeout: float = 5.0, interval: float = 0.02) -> float:
    """Seconds until `name` answers with `expected` among its values; AssertionError after
    `timeout`."""
    started = time.monotonic()
    while True:
        answer = ask(netns, server, name, rdtype, timeout=0.5)
        if expected in answer.values:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{name} {rdtype} via {server} from {netns}: {answer}, "
                                 f"not {expected} after {timeout} s")
        time.sleep(interval)


def answers_rcode(netns: str | None, server: str, name: str, rcode: str, rdtype: str = "A",
                  timeout: float = 5.0, interval: float = 0.02) -> float:
    """Seconds until `name` answers `rcode` with no value; AssertionError after `timeout`."""
    started = time.monotonic()
    while True:
        answer = ask(netns, server, name, rdtype, timeout=0.5)
        if answer.rcode == rcode and not answer.values:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{name} {rdtype} via {server} from {netns}: {answer}, "
                                 f"not {rcode} after {timeout} s")
        time.sleep(interval)
