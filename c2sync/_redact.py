"""Masking secrets (the API key) in text the library builds: ``***`` in their place.

Pure (no I/O, no threads; a test checks the imports), so the protocol core can use it.
Called on whichever thread turns server text into an exception, a log line, a repr or the
command line's output, and only there: never on the per-signal hot path.

Two ways in, for two kinds of text (docs/security.md "The API key"):

- :class:`Redactor` (and :func:`redact`) for exception texts and log lines. Whoever builds
  them holds the key: the link and the handshake (the socket's side), the protocol core
  (``ClientProtocol(secrets=...)``, from ``Options.api_key``), the reader, the command
  line. Passing the key to the one who writes the text keeps the rule local: a client
  masks its own key, and an exception's text never depends on which other clients the
  process ran.
- :func:`remember` and :func:`mask` for the reprs of messages. A message is a plain value
  the user keeps, compares, pickles and exports (``attrs.asdict``): it cannot carry the
  key to mask with without handing it out. So a client remembers its key here, process
  wide, when it is created, and every message's ``repr()`` masks what was remembered. The
  set only grows (a message may be printed long after its client closed); keys shorter
  than :data:`MIN_REMEMBERED` characters are not remembered, since masking them would
  garble ordinary words in every repr (real API keys are long random strings).

:func:`log_failure` writes the log line of a failure (a callback's, a checkpoint store's,
a frame the parser choked on, the reader's last resort) with its text and its traceback
masked: a handler given ``exc_info`` would format the failure's own text.

Each secret is masked as written, as a repr writes it (quotes and backslashes escaped,
unprintable characters as escapes), as JSON writes it (non-ASCII as ``\\uXXXX``, ``/`` as
``\\/``) and percent-encoded. A :class:`Redactor` also masks any other spelling of it
that escapes undo: a run of text holding ``\\`` or ``%`` is decoded (JSON and Python
escapes such as ``\\u002B`` or every character as ``\\uXXXX``, then percent-encoding) and,
when the decoded text holds a secret, replaced by that text masked. And it masks a secret
cut off at the end of a text (a body truncated in the middle of an echoed key), spelled
either way.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Callable
from urllib.parse import quote, unquote

__all__ = ["MASK", "MIN_REMEMBERED", "Redactor", "log_failure", "mask", "redact", "remember"]

MASK = "***"
MIN_TAIL = 4  # a secret cut off at a text's end is masked from this many characters on
MIN_REMEMBERED = 8  # shorter keys are not masked in message reprs (see the docstring)


def _forms(secret: str) -> tuple[str, ...]:
    """How ``secret`` may appear in a text: as is, inside a repr, inside JSON (``/`` escaped
    or not), percent-encoded."""
    forms = [secret]
    written = json.dumps(secret)[1:-1]
    spellings = [repr(secret)[1:-1], written, written.replace("/", "\\/")]
    try:
        spellings += [quote(secret, safe=""), quote(secret, safe="").lower()]
    except UnicodeEncodeError:  # a lone surrogate: no percent-encoded spelling exists
        pass
    for form in spellings:
        if form not in forms:
            forms.append(form)
    return tuple(forms)


# A run of text that may spell a secret with escapes: no whitespace, quotes or angle
# brackets (what ends a JSON string, a header value's word, an HTML attribute).
_RUN = re.compile(r"[^\s\"'<>]+")
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|[\"\\/bfnrt])")
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# An escape cut off at the end of a text (``\\u00`` or ``%4``): dropped before decoding.
_PARTIAL = re.compile(r"(?:\\(?:u[0-9A-Fa-f]{0,3}|x[0-9A-Fa-f]?)?|%[0-9A-Fa-f]?)$")


def _unescape(run: str) -> str:
    """``run`` with JSON and Python escapes, then percent-encoding, undone."""

    def one(match: re.Match[str]) -> str:
        escape = match[1]
        return chr(int(escape[1:], 16)) if len(escape) > 1 else _SIMPLE[escape]

    text = _ESCAPE.sub(one, run)
    if any("\ud800" <= c <= "\udfff" for c in text):
        # A surrogate pair written as two escapes (JSON's way for non-BMP characters).
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return unquote(text, errors="replace")


class Redactor:
    """Masks some secrets in texts: ``Redactor(key)(text)``.

    Args:
        secrets: the strings to mask; empty ones are ignored.
    """

    __slots__ = ("_forms", "_secrets")

    def __init__(self, *secrets: str) -> None:
        self._secrets = tuple(s for s in secrets if s)
        self._forms = tuple(form for s in self._secrets for form in _forms(s))

    def __call__(self, text: str) -> str:
        """``text`` with every secret (and one cut off at its end) replaced by ``***``."""
        if not self._secrets:
            return text
        text = self._plain(text)
        if "\\" in text or "%" in text:
            text = _RUN.sub(self._escaped, text)
        return self._tail(text)

    def _plain(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def _tail(self, text: str) -> str:
        for secret in self._secrets:
            for size in range(len(secret) - 1, MIN_TAIL - 1, -1):
                if text.endswith(secret[:size]):
                    text = text[:-size] + MASK
                    break
        return text

    def _escaped(self, match: re.Match[str]) -> str:
        """A run spelling a secret with escapes, as its decoded text masked; else as is."""
        run = match[0]
        if "\\" not in run and "%" not in run:
            return run
        decoded = _unescape(run)
        masked = self._plain(decoded)
        if masked != decoded:
            return masked
        if match.end() == len(match.string):  # the text may end inside an escaped secret
            cut = _unescape(_PARTIAL.sub("", run))
            masked = self._tail(cut)
            if masked != cut:
                return masked
        return run

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({', '.join(MASK for _ in self._secrets)})"


def redact(text: str, *secrets: str) -> str:
    """``text`` with every secret replaced by ``***``, including a secret cut off at the
    end of ``text`` (a body truncated in the middle of an echoed key)."""
    return Redactor(*secrets)(text)


# Appended to only, never changed in place: ``list.append`` is atomic and iterating a list
# that grows meanwhile is safe, so neither writers (clients created on several threads)
# nor readers (reprs on any thread) need a lock, which a pure module cannot take. A race
# may append a form twice: masking it twice changes nothing.
_remembered: list[str] = []


def remember(secret: str) -> None:
    """Mask ``secret`` in every message's ``repr()`` from now on, in this process (a no-op
    for a secret shorter than :data:`MIN_REMEMBERED` characters)."""
    if len(secret) < MIN_REMEMBERED:
        return
    for form in _forms(secret):
        if form not in _remembered:
            _remembered.append(form)


def mask(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***`` (for reprs)."""
    for form in _remembered:
        if form in text:
            text = text.replace(form, MASK)
    return text


def log_failure(
    log: logging.Logger,
    redact: Callable[[str], str],
    failure: BaseException,
    message: str,
    *args: object,
    level: int = logging.ERROR,
) -> None:
    """Log ``message % args`` with ``failure``'s traceback, the secrets masked in both.

    A handler given ``exc_info`` formats the failure's own text, unmasked: when there is
    something to mask, the traceback goes into the text instead. Otherwise the record is
    the usual one (``exc_info`` set), for handlers that format tracebacks their own way.
    """
    if not log.isEnabledFor(level):
        return
    text = message % args if args else message
    trace = "".join(traceback.format_exception(type(failure), failure, failure.__traceback__))
    shown, shown_trace = redact(text), redact(trace)
    if shown == text and shown_trace == trace:
        log.log(level, message, *args, exc_info=failure, stacklevel=2)
    else:
        log.log(level, "%s\n%s", shown, shown_trace.rstrip(), stacklevel=2)
