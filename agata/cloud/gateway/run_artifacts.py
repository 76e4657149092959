"""The download route of runs' artifacts (operators only).

``GET /api/tasks/{task_id}/runs/{run}/artifacts/{name}``: the file a run saved
(:mod:`agata.cloud.bundles.artifact_store`), streamed from disk like a bundle download.
The run is asked for on the bus first, so an unknown task, run or artifact is 404 with
the task manager's words, and only an artifact the store lists is ever served; a run
that is not a positive integer is 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import Response

from agata.bus.rpc import RpcClient
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.gateway.auth import Principal
from agata.cloud.gateway.downloads import DownloadSlots, FileStream, too_many_downloads
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops

RunPath = Annotated[int, PathParam(ge=1, le=ops.INT32_MAX, description="the run's number")]


def artifacts_router(
    artifacts: ArtifactStore,
    rpc: RpcClient,
    who: Callable[..., Awaitable[Principal]],
    slots: DownloadSlots,
    responses: dict[int | str, dict[str, Any]],
) -> APIRouter:
    """The artifact route; ``who`` is the gated dependency that admits operators only,
    ``slots`` the gateway's download slots."""
    router = APIRouter(tags=["files"])

    @router.get("/api/tasks/{task_id}/runs/{run}/artifacts/{name}", responses=responses)
    async def download_artifact(
        task_id: ops.TaskId, run: RunPath, name: str, principal: Principal = Depends(who)
    ) -> Response:
        """One artifact of a run, streamed from disk (429 while this token runs
        ``max_downloads``)."""
        record = await rpc.call(ops.GET_RUN, {"task_id": task_id, "run": run})
        if not any(item.get("name") == name for item in record.get("artifacts", [])):
            raise AgataError(
                ErrorCode.NOT_FOUND, f"run {run} of task {task_id!r} has no artifact {name!r}"
            )
        handle = artifacts.open(task_id, run, name)
        release = slots.take(f"operator:{principal.name}")
        if release is None:
            handle.close()
            return too_many_downloads(slots.limit)
        disposition = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
        return FileStream(handle, release=release, headers={"Content-Disposition": disposition})

    return router
