"""Streamed uploads (an .ova, a disk image): the file is the request body, sent in chunks with a
progress callback, never read whole into memory.

The request says `Expect: 100-continue` and waits (up to `CONTINUE_WAIT` s) for the API's
answer to its headers before sending a byte: the API checks every value from the query string
first, so a refusal (510: a taken name, no room in the pool) arrives at once and the file is
not sent at all. `urllib` cannot do this, so this module speaks `http.client` directly, with
the connection's TLS settings and token; the answer is judged like every other
(`ApiClient.checked`).
"""

from __future__ import annotations

import http.client
import select
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import click

from pvcd.cli.client import ApiClient, Response, Value, api_path, encode_values
from pvcd.cli.context import CliContext, pass_cli
from pvcd.cli.errors import ApiConnectionLost, ApiUnreachable
from pvcd.cli.progress import ProgressBar
from pvcd.cli.task import follow_task, interactive
from pvcd.domain.uploads import IMAGE_FORMATS

CHUNK = 1 << 20  # bytes per send
CONTINUE_WAIT = 30.0  # seconds to wait for `100 Continue` (or a refusal) before sending anyway
ANSWER_TIMEOUT = 300.0  # seconds for the answer after the body (with --wait: the API's 120 s)


def upload_file(client: ApiClient, path: str, values: Mapping[str, Value], file: Path,
                progress: Callable[[int, int], None], timeout: float) -> Response:
    """POST `file` as the body of `path` (values in the query string); the checked answer."""
    size = file.stat().st_size
    url = urllib.parse.urlsplit(client.connection.url)
    target = f"{url.path}{path}?{encode_values(values)}"
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(url.hostname or "", url.port,
                                                 timeout=timeout, context=client.ssl_context)
    else:
        connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
    try:
        try:
            connection.putrequest("POST", target)
            headers = {"Accept": "application/json", "Content-Type": "application/octet-stream",
                       "Content-Length": str(size), "Expect": "100-continue"}
            if client.connection.token:
                headers["X-Api-Key"] = client.connection.token
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
        except OSError as exc:
            raise ApiUnreachable(f"cannot connect to the PVC API at {client.connection.url}: "
                                 f"{exc}") from None
        try:
            early = _answer_to_headers(connection)
            if early is not None:
                return client.checked("POST", path, early)
            with file.open("rb") as handle:
                _send(connection, handle, size, progress)
            reply = connection.getresponse()
            response = Response(reply.status, reply.read(), reply.getheader("Content-Type", ""))
        except (OSError, http.client.HTTPException) as exc:
            raise ApiConnectionLost(f"the upload to {client.connection.url} broke off: "
                                    f"{exc}") from None
    finally:
        connection.close()
    return client.checked("POST", path, response)


def _answer_to_headers(connection: http.client.HTTPConnection) -> Response | None:
    """None once the API said `100 Continue` (or said nothing within CONTINUE_WAIT: send
    anyway); else its final answer, given before the body (a refusal)."""
    sock = connection.sock
    if sock is None:
        return None
    readable, _, _ = select.select([sock], [], [], CONTINUE_WAIT)
    if not readable:
        return None
    reader = sock.makefile("rb")
    status_line = reader.readline(65537).decode("iso-8859-1")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise http.client.BadStatusLine(status_line)
    headers = http.client.parse_headers(reader)
    status = int(parts[1])
    if status == 100:
        return None
    length = headers.get("Content-Length")
    body = reader.read(int(length)) if length and length.isdigit() else reader.read()
    return Response(status, body, headers.get("Content-Type", ""))


def _send(connection: http.client.HTTPConnection, handle: BinaryIO, size: int,
          progress: Callable[[int, int], None]) -> None:
    sent = 0
    progress(sent, size)
    while chunk := handle.read(CHUNK):
        connection.send(chunk)
        sent += len(chunk)
        progress(sent, size)


@click.command("upload")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@click.argument("image", metavar="FILE",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "--image-format", "-i", "image_format", required=True,
              type=click.Choice(IMAGE_FORMATS), help="The image file's format.")
@click.option("--wait", "-w", is_flag=True,
              help="Follow a conversion (non-raw formats) to its end.")
@click.option("--timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              metavar="SECONDS", help="How long --wait follows the conversion.")
@pass_cli
def volume_upload(cli: CliContext, pool_name: str, name: str, image: Path, image_format: str,
                  wait: bool, timeout: float) -> None:
    """Write the disk image FILE into the existing volume NAME (at least as large as the
    image's disk). Other formats than raw are converted to raw by the cluster; the volume is
    left as it was if anything fails (extensions.md §2.1)."""
    stream = sys.stderr
    size = image.stat().st_size
    bar = ProgressBar(stream, interactive(cli, stream), unit="bytes")

    def progress(sent: int, total: int) -> None:
        bar.update(sent, total, "uploading")

    response = upload_file(cli.client, api_path("storage", "ceph", "volume", pool_name, name,
                                                "upload"),
                           {"image_format": image_format, "file_size": size}, image, progress,
                           ANSWER_TIMEOUT)
    doc = response.json()
    if response.status == 202 and wait:
        follow_task(cli, str(doc["task_id"]), timeout, bar)
        return
    bar.finish(f"Sent {size} bytes")
    cli.message(str(doc.get("message")), doc.get("result"))
