"""The tar reading of the `ova.upload` task refuses what would make `tarfile` hold a huge
header in memory: a pax or GNU long-name header claiming more than 64 KiB."""

from __future__ import annotations

import io
import tarfile

import pytest

from pvcd.controllers.ova_upload import MAX_EXTENDED_HEADER, _BoundedTarInfo
from pvcd.domain.errors import InvalidValue


def archive_with_pax_value(length: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("a.ovf")
        info.pax_headers = {"comment": "x" * length}
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    return out.getvalue()


def first_member(raw: bytes) -> tarfile.TarInfo | None:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|", tarinfo=_BoundedTarInfo) as archive:
        return archive.next()


def test_a_small_pax_header_is_read() -> None:
    member = first_member(archive_with_pax_value(100))
    assert member is not None and member.name == "a.ovf"


def test_a_huge_pax_header_is_refused_before_it_is_read() -> None:
    with pytest.raises(InvalidValue, match="extended tar header"):
        first_member(archive_with_pax_value(MAX_EXTENDED_HEADER + 1))
