"""Disk image uploads into volumes (extensions.md §2.1; docs/storage.md "Uploading an image").

Modules, one concept each:
  session    an upload request's link to its job: the body's pipe, when to answer
  job        the task's work: undo snapshot, receive, convert, clean up (`run_upload`)
  service    where the API starts a job in this process (`UploadService`)
"""

from pvcd.controllers.uploads.job import (
    FileChunks,
    UploadTools,
    remove_artifact,
    run_upload,
    upload_task_kind,
)
from pvcd.controllers.uploads.service import UploadService
from pvcd.controllers.uploads.session import UploadSession

__all__ = ["FileChunks", "UploadService", "UploadSession", "UploadTools", "remove_artifact",
           "run_upload", "upload_task_kind"]
