"""The task offer: what ``rpc_exec_client_requesting_task`` answers, one per task.

The cloud builds each offer with :class:`TaskOffer` and sends its JSON (``ID`` for the
task id, the version as a number, the legacy download username/password only to a
device of the original system); the agent reads the same class back. Reading is
lenient where the wire has varied: ``task_id`` is also taken for ``ID``, a list for
``client_arguments``, a number or a plain name for ``version``; fields the agent does
not know are ignored (a newer cloud may add some). The task id and version become
folder names on the device, so they are checked to be plain names.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

from agata.protocol.bundle_files import BundleFile
from agata.protocol.fields import TaskId, TaskKindName

__all__ = ["OfferVersion", "TaskOffer"]

VERSION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


def _version_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _version_json(value: str) -> int | str:
    """The cloud numbers bundle versions 1, 2, …; JSON carries them as numbers."""
    return int(value) if value.isdigit() else value


#: A bundle version as the agent keeps it (text: it names a folder); a number in JSON.
OfferVersion = Annotated[
    str,
    BeforeValidator(_version_text),
    StringConstraints(pattern=VERSION_PATTERN),
    PlainSerializer(_version_json, return_type=int | str, when_used="json"),
]


def _arguments_text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return shlex.join(str(item) for item in value)
    return value


class TaskOffer(BaseModel):
    """A task this device may run (an item of ``rpc_exec_client_requesting_task``).

    ``client_arguments`` is the shell-joined text the original's agent splits;
    ``client_argv`` the same arguments as a list (AGATA's agents use it, unexpanded).
    ``files`` is the bundle listing a download is verified against, ``download_url``
    the folder its files are fetched from. ``username``/``password`` are present only
    in an offer to a device of the original system (``--legacy-devices``).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    task_id: TaskId = Field(
        validation_alias=AliasChoices("ID", "task_id"), serialization_alias="ID"
    )
    host: str = ""
    port: int | None = None
    tags: tuple[str, ...] = ()
    client_arguments: Annotated[str, BeforeValidator(_arguments_text)] = ""
    client_argv: tuple[str, ...] | None = None
    files_paths: tuple[str, ...] = ()
    files: tuple[BundleFile, ...] = ()
    version: OfferVersion = "0"
    download_url: str = ""
    run: int | None = None  # the task's current run
    limits: dict[str, int | float] = Field(default_factory=dict)  # checked when run
    kind: TaskKindName = "script"
    username: str | None = None
    password: str | None = None

    @property
    def argv(self) -> list[str]:
        """The client side's arguments (after the work path)."""
        if self.client_argv is not None:
            return list(self.client_argv)
        try:
            return shlex.split(self.client_arguments)
        except ValueError:
            return self.client_arguments.split()

    def to_json(self) -> dict[str, Any]:
        """The offer as the cloud sends it: ``ID``, fields given when it was built (so
        the legacy credentials only when set), JSON types."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)
