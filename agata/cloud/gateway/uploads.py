"""Reading a multipart upload so that its spooled files never outlive the request.

Starlette's multipart parser spools each file part to a temporary file (in memory up to
1 MiB, then on disk) and closes those files when parsing fails with one of its own
errors -- but not when the client leaves half way, nor on python-multipart's errors
(which FastAPI turned into a 400): then the files stayed open, their disk space taken,
until the garbage collector found them (20 unfinished 50 MiB uploads held 980 MiB of
the temp folder). :func:`uploaded_files` turns the client leaving into such an error
and closes the spooled files on any other, and closes the files of a complete upload
when the route is done with them. :func:`write_uploaded_files` puts them in a bundle; it
blocks on the disk, so routes run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from agata.cloud.bundles.bundle_store import BundleFile, BundleStore
from agata.errors import AgataError, ErrorCode

#: File parts one upload may have.
MAX_FILES = 1000

#: ``openapi_extra`` of an upload route: its body (the route reads it itself).
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                }
            }
        },
    }
}


class _ClosingParser(MultiPartParser):
    """Starlette's parser that closes what it spooled on *any* failure: Starlette does
    so for its own errors only, not for python-multipart's (a malformed part header)."""

    async def parse(self) -> FormData:
        try:
            return await super().parse()
        except MultiPartException:
            raise  # the files are closed
        except Exception as exc:
            for file in getattr(self, "_files_to_close_on_error", ()):
                file.close()
            raise MultiPartException(f"malformed multipart body ({exc})") from None


async def _until_disconnect(request: Request) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        # The parser closes its spooled files on its own errors only.
        raise MultiPartException("the client left before the upload ended") from None


@asynccontextmanager
async def uploaded_files(request: Request, field: str = "files") -> AsyncIterator[list[UploadFile]]:
    """The files of the multipart body's ``field`` (at least one, else 400); every file
    spooled is closed (its temporary file removed) when the block ends, and at once
    when the body is malformed or the client leaves before it ended."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT, f"{field}: a multipart/form-data body is required"
        )
    parser = _ClosingParser(
        request.headers, _until_disconnect(request), max_files=MAX_FILES, max_fields=MAX_FILES
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{field}: {exc.message}") from None
    try:
        files = [
            value
            for name, value in form.multi_items()
            if name == field and isinstance(value, UploadFile)
        ]
        if not files:
            raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{field}: Field required")
        yield files
    finally:
        await form.close()


def write_uploaded_files(
    bundles: BundleStore, task_id: str, files: list[UploadFile]
) -> list[BundleFile]:
    """Unpack the ``bundle.zip`` parts into the task's bundle, then write the other parts
    under their names; returns the bundle's listing afterwards. Blocking (the disk, an
    fsync per file, hashing): call it in a worker thread."""
    for upload in files:
        if upload.filename == "bundle.zip":
            bundles.extract_archive(task_id, upload.file)  # read from its spool file
    plain = [(f.filename or "", f.file) for f in files if f.filename != "bundle.zip"]
    if plain:
        bundles.write_files(task_id, plain)
    return bundles.list_files(task_id)
