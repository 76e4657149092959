"""The one rule for the names of bundle files, on the cloud and on the agent.

A bundle is a flat folder of plain files. The cloud checks every name it is given (an
upload's files, a zip's members, a recorded listing) with :func:`check_file_name`, and
the agent checks every name of a task offer's listing with the same function before it
fetches anything; so a name the cloud accepts is a name every agent accepts, and a
name an agent would refuse never reaches a bundle.

Refused (``INVALID_ARGUMENT`` with the reason):

- the empty name, ``.`` and ``..``, and names longer than :data:`MAX_NAME_BYTES` bytes
  in UTF-8;
- hidden names (a leading ``.``): the agent keeps its own files beside the bundle's
  (:data:`AGENT_MANIFEST`), and a hidden file is easy to overlook in a review;
- ``/`` and ``\\``, control, format (e.g. the right-to-left override U+202E),
  private-use and unassigned characters, line and paragraph separators, spaces other
  than U+0020, leading or trailing whitespace, a trailing ``.``, the characters reserved
  on Windows (``<>:"|?*``);
- characters that look like ``/``, ``\\`` or ``.`` or that normalise (NFKC) to one of
  them or to any refused character;
- lone surrogates (not valid Unicode).

Everything else printable is allowed. The accepted name is returned in NFC form; a
listing (a set of names already stored) must hold names in that form
(:func:`check_listed_name`).
"""

from __future__ import annotations

import unicodedata
from typing import Final

from agata.errors import invalid

__all__ = ["AGENT_MANIFEST", "MAX_NAME_BYTES", "check_file_name", "check_listed_name"]

MAX_NAME_BYTES: Final = 255
"""Longest file name, in UTF-8 bytes (the usual file-system limit)."""
AGENT_MANIFEST: Final = ".agata-bundle.json"
"""The file the agent writes into each verified bundle folder (hidden, so never a
bundle file's name)."""

_SEPARATORS: Final = frozenset("/\\")
_NOT_PORTABLE: Final = frozenset('<>:"|?*')  # reserved on Windows, ':' on classic macOS
# Characters that look like '/', '\\' or '.' but are not (NFKC maps some of them, not all).
_LOOKALIKES: Final = frozenset(
    "\u2044\u2215\u2216\u2571\u2572\u27cb\u27cd\u29f5\u29f8\u29f9\u0337\u0338"
    "\uff0f\uff3c\ufe68\u3002\uff61\u2024\u2025\u2026\ufe52\uff0e\u2e31\u2e33"
)


def check_file_name(name: object) -> str:
    """Return ``name`` in NFC form if the rule of this module allows it.

    Raises AgataError INVALID_ARGUMENT naming the reason otherwise (also for a value
    that is not a string).
    """
    if not isinstance(name, str):
        raise invalid("a file name must be a string")
    if not name:
        raise invalid("a file name must not be empty")
    shown = ascii(name[:80])
    for ch in name:
        if unicodedata.category(ch) == "Cs":
            raise invalid(f"file name {shown} is not valid Unicode (lone surrogate)")
    nfc = unicodedata.normalize("NFC", name)
    if nfc in (".", ".."):
        raise invalid(f"file name {shown} is not allowed: it names a folder")
    if len(nfc.encode("utf-8")) > MAX_NAME_BYTES:
        raise invalid(f"file name {shown}... is longer than {MAX_NAME_BYTES} bytes")
    _check_characters(nfc, shown)
    if nfc != nfc.strip():
        raise invalid(f"file name {shown} starts or ends with whitespace")
    if nfc.startswith("."):
        raise invalid(f"file name {shown} is hidden (starts with '.'); bundle files may not be")
    if nfc.endswith("."):
        raise invalid(f"file name {shown} ends with '.'")
    nfkc = unicodedata.normalize("NFKC", nfc)
    if nfkc != nfc:
        for ch in nfkc:
            if ch in _SEPARATORS or ch in _NOT_PORTABLE or ch in _LOOKALIKES or ch == ".":
                if nfkc.count(ch) != nfc.count(ch):
                    raise invalid(f"file name {shown} contains a character that looks like {ch!a}")
            if unicodedata.category(ch)[0] == "C":
                raise invalid(f"file name {shown} normalises to a control character")
    return nfc


def check_listed_name(name: object) -> str:
    """A name of a bundle listing: allowed by :func:`check_file_name` and already in
    its NFC form (the cloud records and offers names as it stored them)."""
    normal = check_file_name(name)
    if normal != name:
        raise invalid(f"file name {normal[:80]!a} of the listing is not in NFC form")
    return normal


def _check_characters(name: str, shown: str) -> None:
    for ch in name:
        category = unicodedata.category(ch)
        if category[0] == "C" or category in ("Zl", "Zp"):
            raise invalid(
                f"file name {shown} contains a control or invisible character U+{ord(ch):04X}"
            )
        if ch in _SEPARATORS:
            raise invalid(f"file name {shown} must be a plain name, without '/' or '\\'")
        if ch in _NOT_PORTABLE:
            raise invalid(f"file name {shown} contains {ch!r}, which is not portable")
        if category == "Zs" and ch != " ":
            raise invalid(f"file name {shown} contains an unusual space U+{ord(ch):04X}")
        if ch in _LOOKALIKES:
            raise invalid(
                f"file name {shown} contains U+{ord(ch):04X}, which looks like '/', '\\' or '.'"
            )
