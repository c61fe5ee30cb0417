"""The records' dict forms: `to_doc` is `dataclasses.asdict` (made faster), `from_dict` its
inverse that ignores unknown keys and reads a schema-1 name."""

from __future__ import annotations

import dataclasses

from pvcd.domain import records
from pvcd.domain.records import (
    Migration,
    NodeStats,
    NodeStatus,
    StorageRequest,
    VmRemoval,
    VmSpec,
    VmStatus,
    VmTag,
    from_dict,
)


def every_record() -> list[object]:
    return [
        VmSpec(uuid="u", name="web", xml="<domain/>", node="node1", migration=Migration(
            "node2", 3), info={"disks": [{"name": "p/v"}], "pair": (1, 2)},
            remove=VmRemoval([["pool", "volume", "id"]]), tags=[VmTag("a", protected=True)],
            node_limit=["node1"]),
        VmStatus(node="node1", state="running", hold={"task": "t", "nested": {"x": [1]}}),
        NodeStatus(stats=NodeStats(running_domains=["a", "b"])),
        StorageRequest(id="1", op="volume-add", args={"pool": "p"}, target="primary",
                       mirrored=[["create", "/x"]]),
    ]


def test_to_doc_is_asdict_with_its_copies() -> None:
    for record in every_record():
        doc = record.to_doc()  # type: ignore[attr-defined]
        expected = dataclasses.asdict(record)  # type: ignore[call-overload]
        assert doc == expected and list(doc) == list(expected)
        for name, value in doc.items():  # containers are copies, never the record's own
            if isinstance(value, list | dict):
                assert value is not getattr(record, name)
    status = VmStatus(hold={"nested": {"x": [1]}})
    status.to_doc()["hold"]["nested"]["x"].append(2)
    assert status.hold == {"nested": {"x": [1]}}


def test_from_dict_reads_what_to_doc_wrote_and_ignores_the_rest() -> None:
    for record in every_record():
        doc = {**record.to_doc(), "unknown": 1}  # type: ignore[attr-defined]
        assert from_dict(type(record), doc) == record
    assert from_dict(VmSpec, {"uuid": "u", "name": "n", "xml": "", "node": "a",
                              "selector": "mem"}).node_selector == "mem"
    assert from_dict(VmStatus, None) == VmStatus()
    assert records.as_doc(Migration("a", 1)) == {"source": "a", "request": 1,
                                                 "action": "migrate"}
