"""The device credential: obtained once by enrolling, kept in ``<data_dir>/edge/credential``.

The operator issues an enrollment token (``rpc_exec_create_enrollment_token``); the
device trades it, with its ``user_id``, for a credential of its own
(``POST /api/devices/enroll``). The credential file is JSON
(``{"user_id": ..., "credential": ...}``), written atomically with mode 0600: only
the agent's user may read it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agata.edge.cloud_client import CloudClient
from agata.errors import AgataError, ErrorCode
from agata.files import write_private_file

__all__ = ["credential_path", "enroll_device", "load_credential", "save_credential"]

logger = logging.getLogger(__name__)


def credential_path(data_dir: Path) -> Path:
    return data_dir / "edge" / "credential"


def load_credential(data_dir: Path, user_id: str | None = None) -> str | None:
    """The stored credential, or None when this device has not enrolled.

    Raises AgataError when the file is unreadable or belongs to another ``user_id``.
    """
    path = credential_path(data_dir)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT, f"credential file {path} is unusable: {exc}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("credential"), str):
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"credential file {path} is unusable")
    if user_id is not None and data.get("user_id") != user_id:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"credential file {path} belongs to device {data.get('user_id')!r}, "
            f"not {user_id!r}; enroll again or use another data folder",
        )
    return str(data["credential"])


def save_credential(data_dir: Path, user_id: str, credential: str) -> Path:
    """Write the credential file atomically, readable by its owner only (0600)."""
    path = credential_path(data_dir)
    write_private_file(path, json.dumps({"user_id": user_id, "credential": credential}))
    return path


async def enroll_device(
    cloud_url: str,
    user_id: str,
    enrollment_token: str,
    data_dir: Path,
    *,
    ca_file: Path | None = None,
) -> str:
    """Enroll with the cloud and store the credential; return it."""
    async with CloudClient(cloud_url, ca_file=ca_file) as client:
        credential = await client.enroll(user_id, enrollment_token)
    path = save_credential(data_dir, user_id, credential)
    logger.info("device %s enrolled; credential stored in %s", user_id, path)
    return credential
