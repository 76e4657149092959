"""What the cloud's wheelhouse serves, shared by the gateway and the agent.

``GET /wheelhouse/`` answers :class:`WheelhouseListing`; ``GET /wheelhouse/<name>`` one
file. Only names matching :data:`WHEEL_NAME` (a wheel or a source archive, a single
path component, no leading dot) are ever listed, served or fetched.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from agata.protocol.bundle_files import Sha256Hex

__all__ = ["LISTING_PATH", "WHEEL_NAME", "WheelFile", "WheelhouseListing"]

#: The listing's path; a file is at ``LISTING_PATH + name``.
LISTING_PATH = "/wheelhouse/"
#: The names served: a wheel or a source archive, one path component.
WHEEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,254}\.(whl|tar\.gz)")


class WheelFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(pattern=WHEEL_NAME.pattern.join(("^", "$")))
    size: int = Field(ge=0)
    sha256: Sha256Hex


class WheelhouseListing(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    wheels: list[WheelFile] = Field(max_length=100_000)
