"""The agent's copy of the cloud's wheelhouse, for building task environments offline.

When a task's environment must be built, :meth:`WheelhouseMirror.find_links` asks the
cloud for its wheelhouse listing (``GET /wheelhouse/``, :mod:`agata.protocol.wheelhouse`),
downloads the files this device lacks into its cache folder and answers the installer
options ``["--find-links", <cache>]``; with ``env_no_index`` the installer then uses
nothing else.

- A file is downloaded to a hidden temporary name in the cache, its size and SHA-256
  checked against the listing, and only then renamed into place (atomic), with its
  SHA-256 beside it (``.<name>.sha256``); a half-downloaded or tampered file is never
  used. A SHA-256 that does not match is refused with an AgataError naming the file and
  both sums (the build, and so the run, fails with that reason).
- A file already in the cache with the listed SHA-256 is not downloaded again.
- A cloud serving no wheelhouse (404) gives no options. A cloud that cannot be reached,
  or refuses this device (no credential: 401), gives the cache as it is when it holds
  anything (a warning is logged), else no options: the build then goes to the index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from pydantic import ValidationError

from agata.edge.cloud_client import CloudClient
from agata.errors import AgataError, ErrorCode
from agata.protocol.wheelhouse import LISTING_PATH, WHEEL_NAME, WheelFile, WheelhouseListing

__all__ = ["MAX_LISTING_BYTES", "WheelhouseMirror"]

logger = logging.getLogger(__name__)

#: The largest listing read.
MAX_LISTING_BYTES = 8 * 1024 * 1024


class WheelhouseMirror:
    """Mirrors the wheelhouse of ``client``'s cloud into ``cache`` (see the module)."""

    def __init__(self, client: CloudClient, cache: Path) -> None:
        self.client = client
        self.cache = cache
        self.downloads = 0  # files downloaded so far (tests, diagnostics)

    async def find_links(self) -> list[str]:
        """The installer options for the cloud's wheels (``[]``: none to use); first
        brings the cache up to date. Raises AgataError when a downloaded file does
        not match the listing."""
        self.cache.mkdir(parents=True, exist_ok=True)
        try:
            listing = await self._listing()
        except AgataError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return []  # this cloud serves no wheelhouse
            logger.warning("the cloud's wheelhouse cannot be listed: %s", exc.message)
            return self._options() if self._cached() else []
        for wheel in listing.wheels:
            if not self._have(wheel):
                await self._fetch(wheel)
        return self._options()

    def _options(self) -> list[str]:
        return ["--find-links", str(self.cache)]

    def _cached(self) -> bool:
        return any(WHEEL_NAME.fullmatch(path.name) for path in self.cache.iterdir())

    async def _listing(self) -> WheelhouseListing:
        part = self.cache / f".listing-{secrets.token_hex(4)}"
        try:
            await self.client.download(LISTING_PATH, part, max_bytes=MAX_LISTING_BYTES)
            try:
                return WheelhouseListing.model_validate(json.loads(part.read_bytes()))
            except (ValueError, ValidationError) as exc:
                raise AgataError(
                    ErrorCode.INVALID_ARGUMENT, f"the cloud's wheelhouse listing is invalid: {exc}"
                ) from None
        finally:
            part.unlink(missing_ok=True)

    def _sum_file(self, name: str) -> Path:
        return self.cache / f".{name}.sha256"

    def _have(self, wheel: WheelFile) -> bool:
        try:
            return (
                self._sum_file(wheel.name).read_text("ascii").strip() == wheel.sha256
                and (self.cache / wheel.name).stat().st_size == wheel.size
            )
        except (OSError, UnicodeDecodeError):
            return False

    async def _fetch(self, wheel: WheelFile) -> None:
        final = self.cache / wheel.name
        part = self.cache / f".part-{secrets.token_hex(4)}-{wheel.name}"
        try:
            size, sha256 = await self.client.download(
                LISTING_PATH + quote(wheel.name), part, max_bytes=wheel.size
            )
            if sha256 != wheel.sha256 or size != wheel.size:
                raise AgataError(
                    ErrorCode.INTERNAL,
                    f"wheel {wheel.name} from the cloud's wheelhouse refused: its sha256 is "
                    f"{sha256} ({size} bytes), the listing says {wheel.sha256} "
                    f"({wheel.size} bytes)",
                )
            self._sum_file(wheel.name).unlink(missing_ok=True)
            os.replace(part, final)
            self._sum_file(wheel.name).write_text(wheel.sha256 + "\n", "ascii")
            self.downloads += 1
            logger.info("wheelhouse: %s downloaded (%d bytes)", wheel.name, size)
        except OSError as exc:  # e.g. the disk is full
            raise AgataError(
                ErrorCode.INTERNAL, f"cannot keep wheel {wheel.name} of the wheelhouse: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
