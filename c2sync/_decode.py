"""The JSON decoders behind ``parse_message``: the standard library's and msgspec's.

Pure core (no I/O, no threads of its own): called by whichever thread parses a frame (the
reader thread, or a user's thread calling ``c2sync.parse_message``); both decoders are
reentrant. Each takes the frame's text and returns the decoded tree with every JSON object
a ``ReadOnlyDict`` (arrays stay lists), or raises ``ProtocolError``.

The guarantee: for any text, both give the same tree (the same values, the same key order,
the same types: ``NaN``, ``Infinity`` and integers of any size as Python's ``json`` reads
them) or the same ``ProtocolError`` with the same words. msgspec (the ``c2sync[fast]``
extra) is the fast path only: whatever it refuses (``NaN``, lone surrogates, numbers out of
its range, bad JSON) or nests deeper than ``MAX_FAST_DEPTH`` is decoded again by the
standard library, which has the last word. tests/test_codec_paths.py proves it.

:func:`select` picks the path once, at the first parse (so that ``import c2sync`` does not
import msgspec): msgspec when it imports and passes a self-check, unless the environment
variable ``C2SYNC_PURE_PYTHON`` is set to anything but ``""`` or ``"0"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from .exceptions import ProtocolError
from .messages import ReadOnlyDict

__all__ = ["MAX_DEPTH", "PURE_PYTHON_ENV", "available", "decode_pure", "fast_decoder", "select"]

PURE_PYTHON_ENV = "C2SYNC_PURE_PYTHON"

Decode = Callable[[str], Any]

# Deeper trees go to the standard library, so that how deep a frame may nest is decided by
# one parser only (json's limit is the interpreter's recursion limit). No Collective2
# message nests beyond a handful of levels.
MAX_FAST_DEPTH = 100

# How deep a frame may nest (objects and arrays): a fixed rule, so that whether a frame is
# read never depends on the thread, its stack, or a recursion limit someone raised (a test
# runner does); deeper frames are malformed. Far below json's recursion headroom.
MAX_DEPTH = 500

# object_hook, not object_pairs_hook: the C scanner builds each dict and the hook copies
# it once, ~3 us less per 500-byte message than building pair lists (same result: the
# last of duplicate keys wins either way, at the first one's place).
_JSON = json.JSONDecoder(object_hook=ReadOnlyDict).decode


def decode_pure(text: str) -> Any:
    """Decode with the standard library: every object a ``ReadOnlyDict``.

    Raises:
        ProtocolError: the text is not JSON (or nests beyond the recursion limit).
    """
    if _too_deep(text):
        raise ProtocolError(f"frame is not valid JSON: it nests deeper than {MAX_DEPTH} levels")
    try:
        return _JSON(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}") from exc


def _too_deep(text: str) -> bool:
    """Whether ``text`` opens more than :data:`MAX_DEPTH` objects or arrays at once
    (brackets inside strings do not count). Counting the openers first (C speed) leaves
    the character scan to the rare frame that has more than :data:`MAX_DEPTH` of them.

    A frame that is JSON and nests that deep opens and closes more than :data:`MAX_DEPTH`
    containers, so it is longer than ``2 * MAX_DEPTH`` characters: shorter frames (nearly
    all) skip the count. A shorter one with more openers never closes them all: it is not
    JSON, which json says (a ``ProtocolError`` either way)."""
    if len(text) <= 2 * MAX_DEPTH:
        return False
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


class _TooDeep(Exception):
    pass


# The walk below is the fast path's main cost after msgspec itself: the names it uses are
# bound as default arguments (local loads, not global ones: ~10% of the walk).


def _freeze_dict(
    obj: dict[str, Any], depth: int, _type: Any = type, _dict: Any = dict, _list: Any = list
) -> ReadOnlyDict:
    # Values are replaced in place (the dict is msgspec's fresh one, never shared), then
    # the dict is copied once into a ReadOnlyDict, keeping its key order.
    if depth > MAX_FAST_DEPTH:
        raise _TooDeep
    for key, value in obj.items():
        kind = _type(value)
        if kind is _dict:
            obj[key] = _freeze_dict(value, depth + 1)
        elif kind is _list:
            _freeze_list(value, depth + 1)
    return ReadOnlyDict(obj)


def _freeze_list(
    items: list[Any], depth: int, _type: Any = type, _dict: Any = dict, _list: Any = list
) -> None:
    if depth > MAX_FAST_DEPTH:
        raise _TooDeep
    for index, value in enumerate(items):
        kind = _type(value)
        if kind is _dict:
            items[index] = _freeze_dict(value, depth + 1)
        elif kind is _list:
            _freeze_list(value, depth + 1)


def fast_decoder() -> Decode | None:
    """The msgspec path, or None when msgspec is missing or fails the self-check."""
    try:
        import msgspec
    except ImportError:
        return None
    try:
        raw_decode: Callable[[str], Any] = msgspec.json.Decoder().decode
        # A version that turned wide integers into floats would lose digits silently.
        probe = "[18446744073709551616,-9223372036854775809,1e2,0.1,-0]"
        expected = [2**64, -(2**63) - 1, 100.0, 0.1, 0]
        got = raw_decode(probe)
        if got != expected or [type(v) for v in got] != [type(v) for v in expected]:
            return None
    except Exception:  # a broken install: the standard library still works
        return None

    def decode_fast(text: str) -> Any:
        try:
            obj = raw_decode(text)
        except Exception:  # whatever msgspec refuses, json decides, in its own words
            return decode_pure(text)
        kind = type(obj)
        try:
            if kind is dict:
                return _freeze_dict(obj, 0)
            if kind is list:
                _freeze_list(obj, 0)
        except (_TooDeep, RecursionError):
            return decode_pure(text)
        return obj

    return decode_fast


def available() -> dict[str, Decode]:
    """Every path this interpreter can use, by name: ``json`` always, ``msgspec`` if present."""
    paths: dict[str, Decode] = {"json": decode_pure}
    fast = fast_decoder()
    if fast is not None:
        paths["msgspec"] = fast
    return paths


def select(environ: Mapping[str, str] = os.environ) -> tuple[str, Decode]:
    """The path ``parse_message`` uses: ``("msgspec", ...)`` or ``("json", ...)``."""
    if environ.get(PURE_PYTHON_ENV, "") in ("", "0"):
        fast = fast_decoder()
        if fast is not None:
            return "msgspec", fast
    return "json", decode_pure
