"""The operator CLI's connection to a cloud: the gateway's HTTP API (docs/http-api.md).

``agata task|run|device ...`` call ``POST /<operation>`` and the upload/download routes
with an operator token taken, in this order, from ``--token``, ``$AGATA_TOKEN`` or the
cloud's token file (``<data dir>/operator-token``, written by ``agata cloud run`` on its
first start). Every failure of an operation is an :class:`OperationFailed` with the
gateway's reason; the commands turn it into exit code 1 and a line on stderr. A busy
cloud's 503 with ``Retry-After`` is waited out a bounded number of times, as agents do.
"""

from __future__ import annotations

import functools
import inspect
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

__all__ = [
    "CloudClient",
    "CloudOptions",
    "OperationFailed",
    "TokenMissing",
    "cloud_options",
    "resolve_token",
]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_DATA_DIR = Path("agata-data")
TOKEN_FILE = "operator-token"
#: A busy cloud (503 + Retry-After) is asked again at most this many times.
BUSY_RETRIES = 5
#: The longest single wait for a busy cloud, whatever its Retry-After says.
MAX_RETRY_AFTER = 30.0


class OperationFailed(Exception):
    """The cloud refused or could not do what was asked; ``message`` says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class TokenMissing(Exception):
    """No operator token: not given, not in the environment, no token file."""


def resolve_token(token: str | None, data_dir: Path) -> str:
    """``token``, else ``$AGATA_TOKEN``, else the first line of ``data_dir/operator-token``.

    Raises :class:`TokenMissing` naming the three places when none holds one.
    """
    if token:
        return token.strip()
    from_env = os.environ.get("AGATA_TOKEN", "").strip()
    if from_env:
        return from_env
    path = data_dir / TOKEN_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    if text:
        return text.splitlines()[0].strip()
    raise TokenMissing(
        f"no operator token: pass --token, set AGATA_TOKEN, or point --data-dir at the "
        f"cloud's data folder (no token in {path})"
    )


def _reason(response: httpx.Response) -> str:
    """The gateway's ``detail`` (or the body's text) of an error response."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)
    text = response.text.strip()
    return text[:500] if text else response.reason_phrase


class CloudClient:
    """A synchronous client of one cloud gateway for one operator token."""

    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, verify: str | bool = True
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, a busy cloud's 503 waited out; errors become OperationFailed."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise OperationFailed(f"cannot reach the cloud at {self.url}: {exc}") from None
            retry_after = response.headers.get("Retry-After")
            if response.status_code in (429, 503) and retry_after and attempt < BUSY_RETRIES:
                try:
                    wait = min(float(retry_after), MAX_RETRY_AFTER)
                except ValueError:
                    wait = 1.0
                time.sleep(wait + random.uniform(0, 0.5))
                continue
            if response.status_code >= 400:
                raise OperationFailed(_reason(response), response.status_code)
            return response
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def call(self, operation: str, body: dict[str, Any] | None = None) -> Any:
        """``POST /<operation>`` with ``body``; the operation's return value."""
        response = self._send("POST", f"/{operation}", json=body or {})
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise OperationFailed(f"{operation}: the cloud answered no JSON") from None

    def upload(self, task_id: str, paths: list[Path]) -> Any:
        """Upload files into a task's bundle; the whole listing after the upload."""
        handles = []
        try:
            for path in paths:
                handles.append(("files", (path.name, path.open("rb"))))
            response = self._send("POST", f"/api/tasks/{task_id}/files", files=handles)
        except OSError as exc:
            raise OperationFailed(f"cannot read {exc.filename}: {exc.strerror}") from None
        finally:
            for _, (_, handle) in handles:
                handle.close()
        return response.json()

    @contextmanager
    def download(self, path: str) -> Iterator[httpx.Response]:
        """A streamed ``GET path``; errors become OperationFailed."""
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise OperationFailed(_reason(response), response.status_code)
                yield response
        except httpx.HTTPError as exc:
            raise OperationFailed(f"cannot reach the cloud at {self.url}: {exc}") from None


class CloudOptions:
    """How the commands reach the cloud: the values of the shared options."""

    def __init__(
        self,
        cloud_url: str,
        token: str | None,
        data_dir: Path,
        cafile: Path | None,
        json_out: bool,
    ) -> None:
        self.cloud_url = cloud_url
        self.token = token
        self.data_dir = data_dir
        self.cafile = cafile
        self.json_out = json_out

    def client(self) -> CloudClient:
        """A client with the resolved token (TokenMissing when there is none)."""
        token = resolve_token(self.token, self.data_dir)
        verify: str | bool = str(self.cafile) if self.cafile else True
        return CloudClient(self.cloud_url, token, verify=verify)


# The options every operator command takes, declared once.
CloudUrlOption = Annotated[
    str,
    typer.Option(
        "--cloud-url", envvar="AGATA_CLOUD_URL", help="the cloud gateway", show_default=True
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="operator token (default: $AGATA_TOKEN, else <data dir>/operator-token)",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir", envvar="AGATA_DATA_DIR", help="the cloud's data folder (its token file)"
    ),
]
CaFileOption = Annotated[
    Path | None,
    typer.Option("--ca-file", help="CA certificate (PEM) to check an https:// cloud with"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]

#: The shared options as parameters: name, declaration, default (CloudOptions' order).
_SHARED = (
    ("cloud_url", CloudUrlOption, DEFAULT_URL),
    ("token", TokenOption, None),
    ("data_dir", DataDirOption, DEFAULT_DATA_DIR),
    ("cafile", CaFileOption, None),
    ("json_out", JsonOption, False),
)


def cloud_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` taking the options every operator command takes (``--cloud-url``,
    ``--token``, ``--data-dir``, ``--ca-file``, ``--json``, after its own), whose values
    it receives as one keyword argument ``options: CloudOptions``.

    Typer reads a command's options from its signature, so the one returned is the
    command's own parameters (``options`` left out) followed by the shared ones.
    """
    own = inspect.signature(command, eval_str=True)
    if "options" not in own.parameters:
        raise TypeError(f"{command.__name__} takes no 'options' parameter")
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in _SHARED
    ]

    @functools.wraps(command)
    def with_options(*args: Any, **kwargs: Any) -> None:
        values = [kwargs.pop(name) for name, _, _ in _SHARED]
        command(*args, options=CloudOptions(*values), **kwargs)

    parameters = [p for name, p in own.parameters.items() if name != "options"]
    signature = own.replace(parameters=[*parameters, *shared])
    with_options.__signature__ = signature  # type: ignore[attr-defined]
    return with_options
