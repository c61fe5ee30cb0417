"""`pvc storage volume upload`: a disk image file streamed into a volume (extensions.md §2.1).

The file is sent as the request's whole body (`application/octet-stream`), read in blocks of
`BLOCK` bytes and never whole, with a progress bar (bytes/s, ETA) on a terminal's stderr and
plain lines otherwise. The request carries `Expect: 100-continue`: the API judges the upload
from its headers and answers a refusal (510) before the body is sent, so a refused upload of a
large file fails at once with the API's message instead of a reset connection. When the API
keeps converting after the body (202), `--wait` follows the task to its end.
"""

from __future__ import annotations

import http.client
import select
import sys
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

import click

from pvcd.cli.client import ApiClient, Response, api_path, encode_values
from pvcd.cli.context import CliContext, pass_cli
from pvcd.cli.errors import ApiConnectionLost, ApiUnreachable
from pvcd.cli.progress import ProgressBar
from pvcd.cli.task import follow_task, interactive
from pvcd.domain.uploads import IMAGE_FORMATS

BLOCK = 1 << 20
CONTINUE_WAIT = 10.0  # seconds to wait for `100 Continue` (or a refusal) before sending anyway
ANSWER_TIMEOUT = 300.0  # seconds for the answer after the body (with --wait: the API's 120 s)


class Sent:
    """A file read in blocks, counting what was read (the bytes sent) for the progress bar."""

    def __init__(self, file: BinaryIO, size: int, progress: ProgressBar) -> None:
        self.file = file
        self.size = size
        self.progress = progress
        self.count = 0

    def blocks(self) -> Any:
        while True:
            block = self.file.read(BLOCK)
            if not block:
                return
            self.count += len(block)
            self.progress.update(self.count, self.size, "uploading")
            yield block


def upload_file(client: ApiClient, path: str, values: dict[str, Any], file: BinaryIO,
                size: int, progress: ProgressBar) -> Response:
    """POST `file` (`size` bytes) to `path` with `values` in the query string; the answer."""
    url = urllib.parse.urlsplit(client.connection.url + path)
    target = url.path + "?" + encode_values(values)
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(url.hostname or "", url.port,
                                                 timeout=ANSWER_TIMEOUT,
                                                 context=client.ssl_context)
    else:
        connection = http.client.HTTPConnection(url.hostname or "", url.port,
                                                timeout=ANSWER_TIMEOUT)
    try:
        try:
            connection.putrequest("POST", target, skip_accept_encoding=True)
            connection.putheader("Accept", "application/json")
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader("Content-Length", str(size))
            connection.putheader("Expect", "100-continue")
            if client.connection.token:
                connection.putheader("X-Api-Key", client.connection.token)
            connection.endheaders()
        except OSError as exc:
            raise ApiUnreachable(client.unreachable(exc)) from None
        try:
            early = _early_answer(connection)
            if early is not None:
                return client.checked("POST", path, early)
            for block in Sent(file, size, progress).blocks():
                connection.send(block)
            reply = connection.getresponse()
            response = Response(reply.status, reply.read(),
                                reply.headers.get("Content-Type", ""))
        except (OSError, http.client.HTTPException) as exc:
            raise ApiConnectionLost(client.unreachable(exc)) from None
        return client.checked("POST", path, response)
    finally:
        connection.close()


def _early_answer(connection: http.client.HTTPConnection) -> Response | None:
    """After the headers: None once the API said `100 Continue` (or said nothing within
    CONTINUE_WAIT s); its final answer if it refused the upload at once."""
    sock = connection.sock
    if sock is None:
        return None
    pending = getattr(sock, "pending", lambda: 0)()
    if not pending and not select.select([sock], [], [], CONTINUE_WAIT)[0]:
        return None
    reader = sock.makefile("rb")
    try:
        status_line = reader.readline(65537)
        headers = http.client.parse_headers(reader)
        status = int(status_line.split()[1])
        if status == 100:
            return None
        length = int(headers.get("Content-Length") or 0)
        return Response(status, reader.read(length), headers.get("Content-Type", ""))
    finally:
        reader.close()


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
    left as it was if anything fails."""
    stream = sys.stderr
    size = image.stat().st_size
    progress = ProgressBar(stream, interactive(cli, stream), unit="bytes")
    with image.open("rb") as file:
        response = upload_file(cli.client, api_path("storage", "ceph", "volume", pool_name,
                                                    name, "upload"),
                               {"image_format": image_format, "file_size": size}, file, size,
                               progress)
    doc = response.json()
    if response.status == 202 and wait:
        follow_task(cli, str(doc["task_id"]), timeout, progress)
        return
    progress.finish(f"Sent {size} bytes")
    cli.message(str(doc.get("message")), doc.get("result"))
