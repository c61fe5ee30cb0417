"""Let the operator edit a text in `$VISUAL` / `$EDITOR` (for `pvc vm modify`).

The editor variable may hold arguments (`code --wait`), so it is split like a shell would split
it, and run as an argument list: no shell, so a file name can never be interpreted as code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pvcd.cli.errors import CliError

# The editor is interactive: the operator decides how long it takes. The bound only keeps the
# rule that no child process runs forever.
EDITOR_TIMEOUT = 24 * 3600.0


def editor_command(env: Mapping[str, str]) -> list[str]:
    text = env.get("VISUAL") or env.get("EDITOR") or "vi"
    try:
        command = shlex.split(text)
    except ValueError as exc:
        raise CliError(f"cannot parse the editor command {text!r}: {exc}") from None
    if not command:
        raise CliError("the editor command ($VISUAL / $EDITOR) is empty")
    return command


def edit_text(text: str, env: Mapping[str, str], suffix: str = ".xml") -> str:
    """Open `text` in the editor; return what the file holds when the editor exits."""
    command = editor_command(env)
    fd, name = tempfile.mkstemp(prefix="pvc-", suffix=suffix)
    path = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        try:
            result = subprocess.run([*command, str(path)], check=False,
                                    timeout=EDITOR_TIMEOUT, env=dict(env))
        except FileNotFoundError:
            raise CliError(f"editor {command[0]!r} not found; set $EDITOR") from None
        except subprocess.TimeoutExpired:
            raise CliError("the editor did not exit; nothing was changed") from None
        if result.returncode != 0:
            raise CliError(f"the editor exited with status {result.returncode}; nothing was "
                           "changed")
        return path.read_text()
    finally:
        path.unlink(missing_ok=True)
