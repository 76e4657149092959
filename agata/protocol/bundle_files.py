"""A bundle file as every side lists it: the one ``BundleFile`` of AGATA.

A task's bundle listing (``files`` of a task record and of a task offer, the body of
``rpc_exec_set_task_files``, the reply of an upload) is a list of these. The store
keeps them, the cloud's bundle store writes and lists them, the agent downloads and
verifies by them; all use this class.

It is a frozen dataclass, so building one costs nothing and checks nothing (the store
and the bundle store check what they write); pydantic validates it by the annotations
below wherever it arrives as JSON (a request, an offer). ``name`` is only bounded here:
the bundle name rule (:mod:`agata.protocol.bundle_names`) is applied by the cloud to a
listing it records (:class:`agata.protocol.operations.SetTaskFiles`) and by the agent
before it fetches anything, where a refusal fails the task with the reason instead of
hiding the offer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, StringConstraints

from agata.protocol.fields import JSON_INT_MAX, NoNul

__all__ = ["BundleFile", "BundleFileName", "Sha256Hex"]

#: A file name as a listing carries it (the name rule is checked apart, see above).
BundleFileName = Annotated[str, StringConstraints(min_length=1, max_length=255), NoNul()]
#: A SHA-256 digest in lowercase hex.
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One file of a task bundle: its name in the (flat) bundle, size in bytes, SHA-256."""

    # Fields a newer cloud may add to a listed file are ignored, not refused.
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="ignore")

    name: BundleFileName
    size: Annotated[int, Field(ge=0, le=JSON_INT_MAX)]
    sha256: Sha256Hex
