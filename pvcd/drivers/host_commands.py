"""Running a host tool for its output (`smartctl`, an operator's health command): an argument
list, never a shell, always a timeout, and no exception for the usual failures — a tool that is
missing, fails or hangs is an answer the caller judges (a health check's finding)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NOT_FOUND = 127  # the shell's exit code for a missing command, kept for the same case


@dataclass(frozen=True)
class CommandResult:
    code: int
    stdout: str
    stderr: str = ""
    timed_out: bool = False  # killed when its time was up (`code` is then -9)


# what the health checks are given to run a tool: (argv, timeout) -> its result
CommandRunner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run `argv` (its output read as text), killed after `timeout` s."""
    try:
        result = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, errors="replace", timeout=timeout, check=False)
    except FileNotFoundError:
        return CommandResult(NOT_FOUND, "", f"{argv[0]}: not found")
    except PermissionError as exc:
        return CommandResult(NOT_FOUND, "", f"{argv[0]}: {exc.strerror}")
    except subprocess.TimeoutExpired:
        return CommandResult(-9, "", f"{argv[0]}: no answer within {timeout:g} s", True)
    return CommandResult(result.returncode, result.stdout, result.stderr)
