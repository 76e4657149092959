"""The device's identity and attributes: a device file (TOML or JSON) plus flags.

Device file (TOML; a ``.json`` file holds the same keys as one JSON object)::

    user_id = "pi-kitchen-01"
    data_qnt = 120
    avg_acc_contrib = 0.82
    avg_disconnection_per_round = 0.1
    sensors = ["camera", "microphone"]

    [extra]            # free-form attributes: strings, numbers, booleans
    location = "lab-2"

Any other top-level key with a scalar value is an extra attribute too. Flags override
the file (their ``extra`` is merged into the file's). The values are validated with the
cloud's own request model, so a device file the cloud would refuse is refused here,
with the file's name and the field in the message.

:class:`DeviceSource` re-reads the file when it changed (size or modification time), so
the agent reports new attributes without a restart; a file broken while the agent runs
keeps the last good attributes (logged once) instead of stopping the device.
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agata.errors import AgataError, ErrorCode
from agata.protocol.operations import UpdateUserInfo

__all__ = ["DeviceInfo", "DeviceSource", "device_info", "read_device_file"]

logger = logging.getLogger(__name__)

ExtraValue = str | int | float | bool | None

_KNOWN = ("user_id", "data_qnt", "avg_acc_contrib", "avg_disconnection_per_round", "sensors")


@dataclass(frozen=True)
class DeviceInfo:
    """What the cloud knows about this device (its record, minus the cloud's fields)."""

    user_id: str
    data_qnt: float | None = None
    avg_acc_contrib: float | None = None
    avg_disconnection_per_round: float | None = None
    sensors: tuple[str, ...] = ()
    extra: Mapping[str, ExtraValue] = field(default_factory=dict)

    def to_request(self) -> dict[str, Any]:
        """The body of ``rpc_exec_update_user_info``."""
        body: dict[str, Any] = {"user_id": self.user_id, "sensors": list(self.sensors)}
        for name in ("data_qnt", "avg_acc_contrib", "avg_disconnection_per_round"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.extra:
            body["extra"] = dict(self.extra)
        return body


def device_info(values: Mapping[str, Any], *, source: str = "device attributes") -> DeviceInfo:
    """Validate attribute values (keys of the device file) into a :class:`DeviceInfo`."""
    data: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in _KNOWN:
            data[key] = value
        elif key == "extra":
            if not isinstance(value, Mapping):
                raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{source}: extra must be a table")
            extra.update(value)
        elif isinstance(value, str | int | float | bool):
            extra[key] = value
        else:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"{source}: unknown attribute {key!r} (extra attributes must be strings, "
                "numbers or booleans)",
            )
    if "user_id" not in data or data["user_id"] in (None, ""):
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{source}: user_id is missing")
    if extra:
        data["extra"] = extra
    try:
        model = UpdateUserInfo.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'value'}: {item['msg']}"
            for item in exc.errors()
        )
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{source}: {problems}") from None
    for name in ("data_qnt", "avg_acc_contrib", "avg_disconnection_per_round"):
        number = getattr(model, name)
        if number is not None and not math.isfinite(number):
            raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{source}: {name} must be finite")
    return DeviceInfo(
        user_id=model.user_id,
        data_qnt=model.data_qnt,
        avg_acc_contrib=model.avg_acc_contrib,
        avg_disconnection_per_round=model.avg_disconnection_per_round,
        sensors=tuple(model.sensors or ()),
        extra=dict(model.extra or {}),
    )


def read_device_file(path: Path) -> dict[str, Any]:
    """The raw key/value pairs of a device file; AgataError saying why when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"device file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT, f"device file {path} cannot be read: {exc}"
        ) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, f"device file {path}: invalid JSON: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, f"device file {path}: must hold one JSON object"
            )
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT, f"device file {path}: invalid TOML: {exc}"
        ) from None


def _merge(file_values: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(file_values)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "extra" and isinstance(merged.get("extra"), Mapping):
            merged["extra"] = {**merged["extra"], **value}
        else:
            merged[key] = value
    return merged


class DeviceSource:
    """The device's current attributes: the device file (re-read when it changed) and
    flags (``overrides``, which win). Without a file, the flags alone."""

    def __init__(
        self, path: Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.path = path
        self.overrides = dict(overrides or {})
        self._stamp: tuple[int, int] | None = None
        self._info: DeviceInfo | None = None
        self._broken = False

    def current(self) -> DeviceInfo:
        """The attributes now.

        Raises AgataError when the first reading fails. Later, a broken file keeps the
        last good attributes (a warning is logged once per breakage).
        """
        if self.path is None:
            if self._info is None:
                self._info = device_info(self.overrides, source="device flags")
            return self._info
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if self._info is not None and stamp is not None and stamp == self._stamp:
            return self._info
        try:
            info = device_info(
                _merge(read_device_file(self.path), self.overrides), source=str(self.path)
            )
        except AgataError as exc:
            if self._info is None:
                raise
            if not self._broken:
                logger.warning("%s; keeping the last good attributes", exc.message)
                self._broken = True
            return self._info
        if self._broken:
            logger.info("device file %s is readable again", self.path)
            self._broken = False
        self._stamp = stamp
        self._info = info
        return info
