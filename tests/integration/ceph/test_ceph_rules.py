"""Validation and the OSD-removal rules: pure functions, no cluster needed.

The "never reaches Ceph" tests use a driver whose every subprocess call fails the test, so a
value that is not refused up front shows as a test failure, not as a Ceph error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.drivers.ceph import client as ceph_client
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.drivers.ceph.parsers import ceph_error, clean_stderr, parse_osd_status, parse_pg_map
from pvcd.drivers.ceph.records import Osd, PgState, Pool
from pvcd.drivers.ceph.removal import check_osd_removal, drain_problems
from pvcd.drivers.ceph.values import parse_size

BAD_NAMES = ["", "-x", ".hidden", "+x", "a/b", "a@b", "a b", "a\tb", "a\nb", "a:b", "ä", "x" * 100]
BAD_SIZES: list[Any] = ["", "0", "20X", "1.5G", "20GB", "20g", "-1", "20 G", " 20G", "G",
                        True, 0, -5, None, 2**64]
BAD_PGS: list[Any] = [0, 3, 100, 65536, "abc", -8, True, "8.0", None]
BAD_FLAGS = ["full", "pglog_hardlimit", "nosuch", "", "noout;", "NOOUT", "noout "]


@pytest.fixture
def offline() -> CephDriver:
    return CephDriver("/nonexistent/ceph.conf", "/nonexistent/keyring", timeout=1)


@pytest.fixture(autouse=True)
def no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a Ceph command ran: {args[0] if args else kwargs}")

    monkeypatch.setattr(ceph_client.subprocess, "run", refuse)


@pytest.mark.parametrize(("text", "expected"), [
    ("1073741824", 1 << 30), ("4096M", 4 << 30), ("20G", 20 << 30), ("1K", 1024),
    ("2T", 2 << 40), (512, 512), ("1", 1),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", BAD_SIZES)
def test_bad_sizes_are_refused(value: Any, offline: CephDriver) -> None:
    with pytest.raises(InvalidValue):
        parse_size(value)
    with pytest.raises(InvalidValue):
        offline.volume_create("pool", "vol", value)
    with pytest.raises(InvalidValue):
        offline.volume_resize("pool", "vol", value)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str, offline: CephDriver) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: offline.pool_create(name, 8),
        lambda: offline.pool_delete(name),
        lambda: offline.volume_list(name),
        lambda: offline.volume_create("pool", name, "1G"),
        lambda: offline.volume_create(name, "vol", "1G"),
        lambda: offline.volume_rename("pool", "vol", name),
        lambda: offline.volume_delete("pool", name),
        lambda: offline.volume_info("pool", name),
        lambda: offline.snapshot_create("pool", "vol", name),
        lambda: offline.snapshot_delete("pool", "vol", name),
        lambda: offline.snapshot_list("pool", name),
    ]
    for call in calls:
        with pytest.raises(InvalidValue):
            call()


def test_name_length_limits(offline: CephDriver) -> None:
    with pytest.raises(InvalidValue, match="1-63"):
        offline.pool_create("p" * 64, 8)
    with pytest.raises(InvalidValue, match="1-96"):
        offline.volume_create("pool", "v" * 97, "1G")


@pytest.mark.parametrize("pgs", BAD_PGS)
def test_bad_pgs_are_refused(pgs: Any, offline: CephDriver) -> None:
    with pytest.raises(InvalidValue, match="power of two"):
        offline.pool_create("pool", pgs)


@pytest.mark.parametrize("replicas", [0, 11, "x", True])
def test_bad_replicas_are_refused(replicas: Any, offline: CephDriver) -> None:
    with pytest.raises(InvalidValue):
        offline.pool_create("pool", 8, replicas=replicas)


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_bad_flags_are_refused(flag: str, offline: CephDriver) -> None:
    with pytest.raises(InvalidValue, match="noout"):
        offline.osd_set(flag)
    with pytest.raises(InvalidValue):
        offline.osd_unset(flag)


@pytest.mark.parametrize("osd_id", [-1, "x", "1.0", True, None])
def test_bad_osd_ids_are_refused(osd_id: Any, offline: CephDriver) -> None:
    for call in (offline.osd_in, offline.osd_out):
        with pytest.raises(InvalidValue):
            call(osd_id)
    with pytest.raises(InvalidValue):
        offline.remove_osd_safely(osd_id, lambda osd: None)


# -- error mapping and parsers -------------------------------------------------------------------

def test_errors_map_from_errno() -> None:
    assert isinstance(ceph_error("rbd info", 2, "rbd: error opening image x: (2) No such file"),
                      NotFound)
    assert isinstance(ceph_error("ceph osd pool get", 2, "Error ENOENT: unrecognized pool"),
                      NotFound)
    assert isinstance(ceph_error("rbd create", 17, "(17) File exists"), Conflict)
    assert isinstance(ceph_error("rbd rm", 39, "image has snapshots"), Conflict)
    error = ceph_error("ceph osd set", 22, "Error EINVAL: invalid command")
    assert type(error) is BackendError and "EINVAL" in str(error)


def test_clean_stderr_drops_log_prefixes_and_progress() -> None:
    text = ("rbd: create error: 2026-11-29T03:18:49.176+0000 7f8dc2317380 -1 librbd: rbd image v "
            "already exists\n\n(17) File exists\nRemoving image: 0% complete...failed.\n")
    assert clean_stderr(text) == ("rbd: create error: librbd: rbd image v already exists; "
                                  "(17) File exists")


def test_parse_pg_map() -> None:
    text = ("osdmaptool: osdmap file '/tmp/om'\npool 2 pg_num 8\n"
            "2.0 raw ([0], p0) up ([2], p2) acting ([0], p0)\n"
            "3.1f raw ([1,0], p1) up ([1,0], p1) acting ([1,0], p1)\n"
            "#osd\tcount\tfirst\nosd.0\t10\t5\n")
    assert parse_pg_map(text) == [PgState("2.0", (2,), (0,)), PgState("3.1f", (1, 0), (1, 0))]


def test_parse_osd_status() -> None:
    text = ("ID  HOST   USED  AVAIL  WR OPS  WR DATA  RD OPS  RD DATA  STATE      \n"
            " 0  vm    30.0k  1023M      3     1.5k    1.2k       0   exists,up  \n"
            " 7         0      0      0        0       0        0   exists,new \n")
    rows = parse_osd_status(text)
    assert rows == {0: {"node": "vm", "wr_ops": 3.0, "wr_data": 1536.0, "rd_ops": 1200.0,
                        "rd_data": 0.0}}


# -- removal rules ---------------------------------------------------------------------------

def _osd(osd_id: int, up: bool = True, in_: bool = True) -> Osd:
    return Osd(osd_id, f"uuid-{osd_id}", up, in_, 1.0 if in_ else 0.0, 1.0, ["exists"])


def _pool(name: str, size: int = 1, pg_num: int = 8) -> Pool:
    return Pool(name, 1, size, 1, pg_num, ["rbd"])


CLEAN = [PgState("1.0", (0,), (0,), "active+clean"), PgState("1.1", (1,), (1,), "active+clean")]


def test_removal_of_the_last_up_and_in_osd_is_refused() -> None:
    with pytest.raises(Conflict, match="last OSD that is up and in"):
        check_osd_removal(0, [_osd(0), _osd(1, in_=False)], [_pool("vms")], [], CLEAN)


def test_removal_below_a_pools_size_is_refused() -> None:
    with pytest.raises(Conflict, match=r"vms \(size 2\)"):
        check_osd_removal(0, [_osd(0), _osd(1)], [_pool("vms", size=2)], [], CLEAN)


def test_removal_of_a_down_osd_with_unclean_pgs_is_refused() -> None:
    pgs = [PgState("1.0", (1,), (1,), "stale+active+clean"),
           PgState("1.1", (1,), (1,), "active+clean")]
    with pytest.raises(Conflict, match=r"down.*only copy"):
        check_osd_removal(0, [_osd(0, up=False), _osd(1), _osd(2)], [_pool("vms")], [], pgs)


def test_removal_blocked_by_flags_and_unknown_osd() -> None:
    osds = [_osd(0), _osd(1)]
    with pytest.raises(Conflict, match="nobackfill"):
        check_osd_removal(0, osds, [_pool("vms")], ["nobackfill", "sortbitwise"], CLEAN)
    with pytest.raises(NotFound):
        check_osd_removal(5, osds, [_pool("vms")], [], CLEAN)


def test_removal_allowed() -> None:
    check_osd_removal(0, [_osd(0), _osd(1)], [_pool("vms")], ["noout"], CLEAN)
    # a down OSD that holds nothing (all clean elsewhere) may go
    check_osd_removal(0, [_osd(0, up=False), _osd(1)], [_pool("vms")], [],
                      [PgState("1.0", (1,), (1,), "active+clean")])


def test_drain_waits_for_map_reports_and_clean_states() -> None:
    mapped = [PgState("1.0", (1,), (0,)), PgState("1.1", (1,), (1,))]
    reported = [PgState("1.0", (1,), (0,), "active+remapped+backfilling"),
                PgState("1.1", (0,), (0,), "active+clean")]  # report from the old interval
    assert drain_problems(0, mapped, reported) == (["1.0"], ["1.1"], ["1.0"])
    done_map = [PgState("1.0", (1,), (1,)), PgState("1.1", (1,), (1,))]
    done = [PgState("1.0", (1,), (1,), "active+clean"), PgState("1.1", (1,), (1,), "active+clean")]
    assert drain_problems(0, done_map, done) == ([], [], [])
    assert drain_problems(0, done_map, done[:1]) == ([], ["1.1"], [])


def test_timeouts_become_backend_errors(monkeypatch: pytest.MonkeyPatch,
                                        offline: CephDriver) -> None:
    def hang(*args: Any, **kwargs: Any) -> None:
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout", 0))

    monkeypatch.setattr(ceph_client.subprocess, "run", hang)
    with pytest.raises(BackendError, match="timed out after 1 s"):
        offline.status()
