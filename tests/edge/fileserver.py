"""A tiny real HTTP server on 127.0.0.1 for tests of the agent's HTTP side.

Routes are set by the test: ``server.routes[path] = (status, body, content_type)``;
every request is recorded (method, path, headers) in ``server.requests``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FileServer:
    url: str
    routes: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


@contextmanager
def file_server() -> Iterator[FileServer]:
    state = FileServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(
                Recorded(self.command, self.path, dict(self.headers.items()), body)
            )
            status, content, content_type = state.routes.get(
                self.path, (404, b'{"detail": "not found"}', "application/json")
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
