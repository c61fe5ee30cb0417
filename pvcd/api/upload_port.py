"""What the API needs from the process's upload service (`pvcd.controllers.uploads`), which the
daemon passes in through `ApiContext.upload_service`: the API does not import the controllers."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from pvcd.domain.tasks import TaskRecord
from pvcd.domain.uploads import UploadPlan
from pvcd.upload_pipe import UploadPipe


class BodySink(Protocol):
    """Where an upload request's body goes (`UploadSession`)."""

    @property
    def pipe(self) -> UploadPipe:
        """The body's way to the job: `write` each chunk, `finish`, or `abort` if cut short."""

    @property
    def settled(self) -> Awaitable[None]:
        """Done once the task has finished, or has the body and converts it."""

    def refuse(self, reason: str) -> None:
        """The body cannot be used: the task fails with `reason`."""


class Uploads(Protocol):
    """The upload service of the API's process."""

    @property
    def executor(self) -> str:
        """`<node>/<pid>`: upload tasks are created claimed by this process."""

    def check_room(self, pool: str, size: int) -> None:
        """InvalidValue unless the pool can take a temporary volume of `size` bytes (blocks)."""

    def begin(self, record: TaskRecord, version: int, plan: UploadPlan) -> BodySink:
        """Start the job of the task `record`, created at `version`."""
