"""The pure rules behind bounded work per request: the `limit` matcher (RE2, a program size cap
and a time budget), ZooKeeper's rule for a znode name, and the size of a ZooKeeper write."""

from __future__ import annotations

import pytest

from pvcd.api.name_filter import MATCH_BUDGET, MAX_PATTERN_LENGTH, NameFilter
from pvcd.api.values import RawValues, integer
from pvcd.domain.errors import InvalidValue
from pvcd.domain.znode_names import znode_name_problem
from pvcd.state.request_size import MAX_REQUEST_BYTES, check_request_size, request_bytes
from pvcd.state.store import Op


class StepClock:
    """A clock that advances `step` seconds at every reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("pattern, name, found", [
    ("de2", "node2", True), ("^de2", "node2", False), ("^web[0-9]+$", "web12", True),
    ("(?i)WEB", "web1", True), ("(a+)+$", "a" * 5000 + "!", False), ("é", "café", True),
    ("a", "\ud800a", False),  # no UTF-8 form: no match, no error
])
def test_the_filter_searches_like_re(pattern: str, name: str, found: bool) -> None:
    assert NameFilter(pattern).search(name) is found


def test_matching_past_the_budget_fails_the_request() -> None:
    clock = StepClock(MATCH_BUDGET * 0.4)  # every search "takes" 40 % of the budget
    matcher = NameFilter("web", clock=clock)
    assert matcher.search("web1") and matcher.search("web2")  # 80 % spent
    with pytest.raises(InvalidValue, match=r"took more than 0\.25 s to match"):
        matcher.search("web3")


@pytest.mark.parametrize("pattern, message", [
    ("(.*){1000}", "too complex"),
    ("((.?){50}){19}", "too complex"),
    ("(x)\\1", "no backreferences"),
    ("(?<=a)b", "lookaround"),
    ("a{1001}", "not a valid regular expression"),
    ("x" * (MAX_PATTERN_LENGTH + 1), f"at most {MAX_PATTERN_LENGTH} characters"),
    ("\ud800", "not valid text"),
])
def test_a_pattern_that_is_invalid_or_too_costly_is_refused(pattern: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        NameFilter(pattern)


@pytest.mark.parametrize("name", ["web1", "web.1", "a..b", "...", "é", "日本", "a b", "x" * 500])
def test_zookeeper_takes_these_names(name: str) -> None:
    assert znode_name_problem(name) is None


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00", "a\n", "a\x7f", "a\x85",
                                  "\ud800", "\ue000", "\uf8ff", "\ufff0", "\ufffd", "\uffff",
                                  "\U0001f600"])
def test_zookeeper_refuses_these_names(name: str) -> None:
    assert znode_name_problem(name) is not None


def test_a_write_is_measured_as_stored() -> None:
    ascii_doc = {"xml": "x" * 1000}
    wide_doc = {"xml": "é" * 1000}  # 2 bytes in UTF-8, 6 in the stored JSON (\u00e9)
    assert request_bytes([Op.create("/a", wide_doc)]) - \
        request_bytes([Op.create("/a", ascii_doc)]) == 5000
    assert request_bytes([Op.delete("/a/b")]) < 1000
    check_request_size([Op.create("/a", {"xml": "x" * (MAX_REQUEST_BYTES - 2000)})], "it")
    with pytest.raises(InvalidValue, match=f"more than the {MAX_REQUEST_BYTES} bytes"):
        check_request_size([Op.create("/a", wide_doc),
                            Op.set("/b", {"xml": "é" * (MAX_REQUEST_BYTES // 6)}, 0)], "it")


def test_ten_thousand_digits_anywhere_in_a_request_are_refused() -> None:
    digits = "9" * 10_000
    with pytest.raises(InvalidValue, match="not valid JSON"):  # json.loads refuses it itself
        RawValues.from_request({}, {}, "application/json", f'{{"order": {digits}}}'.encode())
    raw = RawValues.from_request({"order": [digits.encode()]}, {}, "", b"")
    with pytest.raises(InvalidValue, match=r"order '9{40}\.\.\. \(10000 characters\)'"):
        raw.parse([integer("order", "A position.", minimum=0)])
