"""The operator's web console: static files served by the cloud gateway at ``/ui/``.

Everything lives in ``static/`` (plain HTML, CSS and JavaScript modules; no build step,
no CDN). The console talks only to the gateway's HTTP API (docs/http-api.md) and its
``/api/stream`` server-sent events. See docs/web-ui.md.
"""

from __future__ import annotations

from pathlib import Path

#: The folder the gateway mounts at ``/ui/``.
STATIC_ROOT = Path(__file__).resolve().parent / "static"
