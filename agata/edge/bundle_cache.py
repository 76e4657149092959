"""Task bundles on the device: ``<root>/task_<id>/v<version>/``, verified, atomic.

A bundle is downloaded file by file into a temporary folder next to its final place,
each file hashed while it streams in and compared with the SHA-256 and size the cloud
listed in the task offer. Only a complete, verified bundle is renamed into place, with
a manifest (``.agata-bundle.json``, the listing it was verified against), so a bundle
folder that exists is always whole.

- An unchanged bundle (same listing) is reused without any request; files whose hash
  is already in another version of the same task are linked instead of downloaded.
- File names must follow the cloud's own rule (:mod:`agata.protocol.bundle_names`:
  plain names, no folders, no ``..``, no hidden files): a listing with any other name
  is refused before anything is fetched.
- A failed or tampered download is retried ``attempts`` times. The final error is
  raised: :func:`~agata.edge.cloud_client.is_transient` tells the agent whether to try
  again later (the cloud is down) or to quarantine the task (a missing or tampered file,
  a bad listing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import quote

from agata.edge.backoff import Backoff
from agata.edge.cloud_client import CloudClient, is_transient
from agata.errors import AgataError, ErrorCode
from agata.protocol.bundle_files import BundleFile
from agata.protocol.bundle_names import AGENT_MANIFEST, check_listed_name
from agata.protocol.offers import TaskOffer

__all__ = ["MANIFEST", "BundleCache", "check_file_name"]

logger = logging.getLogger(__name__)

MANIFEST = AGENT_MANIFEST


def check_file_name(name: str) -> None:
    """Refuse a listed name the cloud's rule does not allow, or one not in the form the
    cloud stores (AgataError INVALID_ARGUMENT with the reason); see
    :mod:`agata.protocol.bundle_names`."""
    try:
        check_listed_name(name)
    except AgataError as exc:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT, f"bundle listing refused: {exc.message}"
        ) from None


def _listing(files: tuple[BundleFile, ...] | list[BundleFile]) -> list[dict[str, object]]:
    return sorted(
        ({"name": f.name, "size": f.size, "sha256": f.sha256} for f in files),
        key=lambda item: str(item["name"]),
    )


class BundleCache:
    """Downloads and keeps the bundles of the tasks this device runs.

    Args:
        root: the folder of all bundles (``<data_dir>/edge/bundles``).
        client: how files are fetched.
        attempts: downloads of one bundle before giving up.
    """

    def __init__(
        self,
        root: Path,
        client: CloudClient,
        *,
        attempts: int = 3,
        backoff: Backoff | None = None,
    ) -> None:
        self.root = root
        self.client = client
        self.attempts = max(1, attempts)
        self._backoff = backoff or Backoff(0.2, 2.0)
        self._locks: dict[str, asyncio.Lock] = {}
        self.downloads = 0  # files fetched over the network (for statistics and tests)

    def task_dir(self, task_id: str) -> Path:
        return self.root / f"task_{task_id}"

    def path_for(self, offer: TaskOffer) -> Path:
        return self.task_dir(offer.task_id) / f"v{offer.version}"

    def cached(self, offer: TaskOffer) -> Path | None:
        """The bundle folder when it holds exactly what ``offer`` lists, else None."""
        folder = self.path_for(offer)
        manifest = self._read_manifest(folder)
        if manifest is None or manifest != _listing(offer.files):
            return None
        for item in manifest:
            file = folder / str(item["name"])
            try:
                if file.stat().st_size != item["size"]:
                    return None
            except OSError:
                return None
        return folder

    async def ensure(self, offer: TaskOffer) -> Path:
        """The verified bundle folder of ``offer``, downloading it when needed.

        Raises AgataError: INVALID_ARGUMENT for a bad listing or a file that never
        matched its hash, NOT_FOUND for a file missing on the server, TOO_LARGE for a
        file longer than listed, or the transient error that stopped the last attempt.
        """
        if not offer.files:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, f"the cloud lists no files for task {offer.task_id}"
            )
        names = set()
        for file in offer.files:
            check_file_name(file.name)
            if file.name in names:
                raise AgataError(
                    ErrorCode.INVALID_ARGUMENT, f"bundle file {file.name!r} listed twice"
                )
            names.add(file.name)
        lock = self._locks.setdefault(offer.task_id, asyncio.Lock())
        async with lock:
            folder = self.cached(offer)
            if folder is not None:
                logger.debug("task %s v%s: bundle reused", offer.task_id, offer.version)
                return folder
            return await self._download_with_retries(offer)

    def prune(self, task_id: str, keep: set[str]) -> None:
        """Remove this task's bundle versions other than ``keep`` (version strings)."""
        task_dir = self.task_dir(task_id)
        if not task_dir.is_dir():
            return
        for entry in task_dir.iterdir():
            if entry.name.startswith("v") and entry.name[1:] not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def clean_temporary(self) -> None:
        """Remove half-downloaded folders left by a previous run."""
        if not self.root.is_dir():
            return
        for task_dir in self.root.iterdir():
            if task_dir.is_dir():
                for entry in task_dir.glob(".tmp-*"):
                    shutil.rmtree(entry, ignore_errors=True)
                for entry in task_dir.glob(".old-*"):
                    shutil.rmtree(entry, ignore_errors=True)

    # -- downloading ------------------------------------------------------------------

    async def _download_with_retries(self, offer: TaskOffer) -> Path:
        backoff = Backoff(self._backoff.initial, self._backoff.maximum)
        last: AgataError | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._download(offer)
            except AgataError as exc:
                last = exc
                logger.warning(
                    "task %s v%s: download attempt %d/%d failed: %s",
                    offer.task_id,
                    offer.version,
                    attempt,
                    self.attempts,
                    exc.message,
                )
                if attempt < self.attempts:
                    await asyncio.sleep(backoff.next())
        assert last is not None
        if is_transient(last):
            raise last
        raise AgataError(
            last.code,
            f"bundle of task {offer.task_id} v{offer.version} failed after "
            f"{self.attempts} attempts: {last.message}",
        )

    async def _download(self, offer: TaskOffer) -> Path:
        task_dir = self.task_dir(offer.task_id)
        task_dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(offer)
        temporary = task_dir / f".tmp-v{offer.version}-{secrets.token_hex(4)}"
        temporary.mkdir()
        try:
            known = self._known_files(task_dir)
            base = offer.download_url or f"/download/{offer.task_id}/"
            if not base.endswith("/"):
                base += "/"
            auth = None
            if self.client.credential is None and offer.username:
                auth = (offer.username, offer.password or "")
            for file in offer.files:
                target = temporary / file.name
                if self._reuse(known.get(file.sha256), target, file):
                    continue
                size, sha256 = await self.client.download(
                    base + quote(file.name), target, max_bytes=file.size, auth=auth
                )
                self.downloads += 1
                if size != file.size or sha256 != file.sha256:
                    raise AgataError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"file {file.name!r} does not match the listing "
                        f"(got {size} bytes, SHA-256 {sha256[:12]}…; "
                        f"listed {file.size} bytes, {file.sha256[:12]}…)",
                    )
            (temporary / MANIFEST).write_text(json.dumps(_listing(offer.files)), "utf-8")
            self._move_into_place(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        logger.info("task %s v%s: bundle downloaded to %s", offer.task_id, offer.version, final)
        return final

    @staticmethod
    def _reuse(source: Path | None, target: Path, file: BundleFile) -> bool:
        """Link (or copy) a file already verified in another version of the task."""
        if source is None:
            return False
        try:
            if source.stat().st_size != file.size:
                return False
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        except OSError:
            return False
        return True

    def _known_files(self, task_dir: Path) -> dict[str, Path]:
        """sha256 -> a verified file of any complete version of this task."""
        known: dict[str, Path] = {}
        for folder in task_dir.glob("v*"):
            for item in self._read_manifest(folder) or []:
                known.setdefault(str(item["sha256"]), folder / str(item["name"]))
        return known

    @staticmethod
    def _read_manifest(folder: Path) -> list[dict[str, object]] | None:
        try:
            data = json.loads((folder / MANIFEST).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, list) else None

    @staticmethod
    def _move_into_place(temporary: Path, final: Path) -> None:
        old = None
        if final.exists():
            # A stale or damaged folder of the same version: swap it out first.
            old = final.parent / f".old-{final.name}-{secrets.token_hex(4)}"
            final.rename(old)
        try:
            temporary.rename(final)
        finally:
            if old is not None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(old)
