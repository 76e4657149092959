"""``/ui/js/protocol.js``: the protocol's rules the web UI uses, written from
:mod:`agata.protocol` when the gateway starts, so the UI never keeps a copy of its own.

The module exports ``TASK_ID_PATTERN`` (and ``TASK_ID``, the same as a ``RegExp``)
and ``STREAM_KINDS``, the event names ``/api/stream`` carries (every notification kind
but ``stop_task``, which is for the services alone).
"""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import Response

from agata.protocol.fields import TASK_ID_PATTERN
from agata.protocol.notifications import NOTIFICATION_KINDS

__all__ = ["PATH", "protocol_module", "web_protocol_router"]

PATH = "/ui/js/protocol.js"


def protocol_module() -> str:
    """The JavaScript module's text."""
    kinds = [kind for kind in NOTIFICATION_KINDS if kind != "stop_task"]
    return (
        "// Written by the AGATA gateway from agata.protocol; there is no such file.\n"
        f"export const TASK_ID_PATTERN = {json.dumps(TASK_ID_PATTERN)};\n"
        "export const TASK_ID = new RegExp(TASK_ID_PATTERN);\n"
        f"export const STREAM_KINDS = Object.freeze({json.dumps(kinds)});\n"
    )


def web_protocol_router() -> APIRouter:
    """The route of :data:`PATH` (public, like the rest of ``/ui/``); include it before
    the ``/ui`` static mount."""
    router = APIRouter()
    text = protocol_module()

    @router.get(PATH, include_in_schema=False)
    async def read_web_protocol() -> Response:
        return Response(text, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    return router
