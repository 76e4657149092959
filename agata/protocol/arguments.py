"""Per-device values in a task's client arguments: one expansion for agent and cloud.

Every device receives the same ``client_arguments``; placeholders let each one fill in
its own values, e.g. ``--client-index {client_index} --address {host}:{port}``:

- ``{user_id}``, ``{data_qnt}``, ``{avg_acc_contrib}``, ``{avg_disconnection_per_round}``,
  ``{sensors}`` (sorted, comma-separated) and any extra attribute of the device (its
  device file's other keys);
- ``{host}`` and ``{port}``: the task's, as the cloud lists them.

``{{`` and ``}}`` stand for literal braces; other text is left alone. A placeholder the
device has no value for is an error naming it: the task cannot run on that device as
configured.

Our edge agent expands the arguments itself, from its device file. A device of the
original system expands nothing, so the cloud expands them for it, from the device's
record (``--legacy-devices``). Both go through :func:`placeholder_values` and
:func:`expand_client_arguments`, so one device gets the same argv either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from agata.errors import AgataError, ErrorCode

__all__ = ["expand_client_arguments", "placeholder_values"]

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholder_values(
    *,
    user_id: str,
    numbers: Mapping[str, float | int | None],
    sensors: Iterable[str],
    extra: Mapping[str, object],
    host: str,
    port: int | None,
) -> dict[str, str]:
    """The values a device fills in, by placeholder name.

    ``numbers`` holds ``data_qnt``, ``avg_acc_contrib`` and
    ``avg_disconnection_per_round`` (None: the device has no value). Fields of the
    record win over extra attributes of the same name; a None value is no value. An
    empty ``host`` or a None ``port`` gives no ``{host}``/``{port}``.
    """
    values: dict[str, str] = {}
    for key, value in extra.items():
        if value is not None:
            values[key] = _text(value)
    for key, number in numbers.items():
        if number is not None:
            values[key] = _text(number)
    values["sensors"] = ",".join(sorted(set(sensors)))
    values["user_id"] = user_id
    if host:
        values["host"] = host
    if port is not None:
        values["port"] = str(port)
    return values


def expand_client_arguments(arguments: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """``arguments`` with every ``{name}`` replaced by ``values[name]``.

    Raises AgataError (INVALID_ARGUMENT) naming the first placeholder without a value
    and the names that have one.
    """

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "{{":
            return "{"
        if text == "}}":
            return "}"
        name = match.group(1)
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"client_arguments use {{{name}}}, which this device has no value for "
                f"(known: {known}); add it to the device file or write {{{{{name}}}}} "
                "for the literal text",
            )
        return values[name]

    return [_PLACEHOLDER.sub(replace, argument) for argument in arguments]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
