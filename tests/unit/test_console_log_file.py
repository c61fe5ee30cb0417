"""The console log a node follows: only a regular file inside the console log directory
(symlinks resolved, checked on what was opened), read in bounded steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pvcd.drivers.console_log import ConsoleLogFile, ConsoleLogRefused, console_log_path


@pytest.fixture
def consoles(tmp_path: Path) -> Path:
    folder = tmp_path / "consoles"
    folder.mkdir()
    return folder


def test_the_log_file_is_taken_from_serial_then_console() -> None:
    serial = ("<domain><devices><serial type='pty'><log file='/a/s.log' append='on'/>"
              "<target port='0'/></serial><console type='pty'><log file='/a/c.log'/>"
              "</console></devices></domain>")
    assert console_log_path(serial) == "/a/s.log"
    console = ("<domain><devices><console type='pty'><log file='/a/c.log'/></console>"
               "</devices></domain>")
    assert console_log_path(console) == "/a/c.log"
    assert console_log_path("<domain><devices><serial type='pty'/></devices></domain>") is None
    assert console_log_path("not xml") is None


def test_a_file_inside_the_directory_is_read(consoles: Path) -> None:
    log = consoles / "vm.log"
    log.write_bytes(b"hello\n")
    file = ConsoleLogFile(str(log), str(consoles))
    try:
        assert file.read(1024) == (b"hello\n", 0)
        assert file.read(1024) == (b"", 0)
        with log.open("ab") as out:
            out.write(b"more\n")
        assert file.read(1024) == (b"more\n", 0)
    finally:
        file.close()


@pytest.mark.parametrize("name", ["../outside.log", "sub/../../outside.log"])
def test_a_path_outside_the_directory_is_refused(consoles: Path, name: str) -> None:
    (consoles.parent / "outside.log").write_text("secret\n")
    (consoles / "sub").mkdir()
    with pytest.raises(ConsoleLogRefused, match="outside the console log directory"):
        ConsoleLogFile(f"{consoles}/{name}", str(consoles))


def test_a_symlink_leading_outside_is_refused(consoles: Path, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:x:0:0\n")
    (consoles / "vm.log").symlink_to(secret)
    with pytest.raises(ConsoleLogRefused, match="outside"):
        ConsoleLogFile(str(consoles / "vm.log"), str(consoles))


def test_a_symlinked_directory_leading_outside_is_refused(consoles: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "vm.log").write_text("x\n")
    (consoles / "link").symlink_to(elsewhere)
    with pytest.raises(ConsoleLogRefused, match="outside"):
        ConsoleLogFile(str(consoles / "link" / "vm.log"), str(consoles))


def test_a_symlink_inside_the_directory_is_followed(consoles: Path) -> None:
    (consoles / "real.log").write_text("inside\n")
    (consoles / "vm.log").symlink_to(consoles / "real.log")
    file = ConsoleLogFile(str(consoles / "vm.log"), str(consoles))
    try:
        assert file.read(100) == (b"inside\n", 0)
    finally:
        file.close()


def test_the_directory_itself_may_be_a_symlink(consoles: Path, tmp_path: Path) -> None:
    (consoles / "vm.log").write_text("ok\n")
    alias = tmp_path / "alias"
    alias.symlink_to(consoles)
    file = ConsoleLogFile(str(alias / "vm.log"), str(alias))
    file.close()


def test_a_fifo_or_a_relative_path_is_refused(consoles: Path) -> None:
    os.mkfifo(consoles / "pipe.log")  # opening a FIFO for reading must not hang
    with pytest.raises(ConsoleLogRefused, match="not a regular file"):
        ConsoleLogFile(str(consoles / "pipe.log"), str(consoles))
    with pytest.raises(ConsoleLogRefused, match="absolute"):
        ConsoleLogFile("vm.log", str(consoles))


def test_a_missing_file_is_not_found(consoles: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ConsoleLogFile(str(consoles / "none.log"), str(consoles))


def test_a_flood_is_read_newest_first_and_the_rest_skipped(consoles: Path) -> None:
    log = consoles / "vm.log"
    log.write_bytes(b"a" * 10_000 + b"b" * 100)
    file = ConsoleLogFile(str(log), str(consoles))
    try:
        data, skipped = file.read(100)
        assert (data, skipped) == (b"b" * 100, 10_000)
        assert file.position == 10_100
    finally:
        file.close()


def test_a_truncated_file_is_read_from_its_start(consoles: Path) -> None:
    log = consoles / "vm.log"
    log.write_bytes(b"first run, a long line\n")
    file = ConsoleLogFile(str(log), str(consoles))
    try:
        file.read(1000)
        log.write_bytes(b"again\n")  # the guest started again (append='off')
        assert file.read(1000) == (b"again\n", 0)
    finally:
        file.close()


def test_a_rotated_file_is_noticed(consoles: Path) -> None:
    log = consoles / "vm.log"
    log.write_bytes(b"old\n")
    file = ConsoleLogFile(str(log), str(consoles))
    try:
        assert not file.replaced()
        log.rename(consoles / "vm.log.0")
        log.write_bytes(b"new\n")
        assert file.replaced()
        assert file.read(100) == (b"old\n", 0)  # what the old file had is still read
    finally:
        file.close()
