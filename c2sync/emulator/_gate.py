"""Who may connect to the emulator, without I/O: the path, the API key, the connections per
key, and refusals a test forces (docs/protocol.md sections 1, 2 and 6).

Called only from the emulator's event loop thread, one call at a time (the handshake hook
and the end of each connection); nothing here touches a socket, a clock or a thread. The
server in ``_server.py`` turns a :class:`Refusal` into the HTTP answer, passing the ``Date``
header in, so every decision can be checked without a server
(``tests/test_emulator_rules.py``).
"""

from __future__ import annotations

import collections
import http
import json
from collections.abc import Mapping, Sequence

import attrs

from .._spec import (
    CODE_CONNECTION_LIMIT,
    CODE_RATE_LIMITED,
    CODE_SERVICE_UNAVAILABLE,
    CODE_UNAUTHORIZED,
    ERROR_HEADER,
)

__all__ = ["PATH", "REFUSALS", "Admitted", "Gate", "Refusal", "forced_refusal"]

PATH = "/ws"  # section 1

# Default answers of a forced refusal (section 2): status -> (X-WS-Error, JSON code).
REFUSALS: dict[int, tuple[str, str]] = {
    401: ("Invalid API key", CODE_UNAUTHORIZED),
    429: ("Rate limit exceeded", CODE_RATE_LIMITED),
    503: ("Server connection limit reached", CODE_SERVICE_UNAVAILABLE),
}


@attrs.frozen
class Refusal:
    """An upgrade answered with an HTTP error instead of 101 (section 2).

    Attributes:
        status: the HTTP status.
        message: the ``X-WS-Error`` header, and the body's ``message``.
        code: the body's ``code``.
        headers: headers added to, or replacing, the usual ones.
        body: the body; None gives ``{"code":…,"message":…}``.
    """

    status: int
    message: str
    code: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes | None = None

    @property
    def phrase(self) -> str:
        """The status line's reason phrase."""
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    def content(self) -> bytes:
        """The response body."""
        if self.body is not None:
            return self.body
        text = json.dumps({"code": self.code, "message": self.message}, separators=(",", ":"))
        return text.encode()

    def response_headers(self, date: str) -> list[tuple[str, str]]:
        """The response headers, in order: the usual ones, then :attr:`headers`, each of
        which replaces every usual header of its name (names compare case-insensitively).

        Args:
            date: the ``Date`` header's value.
        """
        pairs = [
            ("Date", date),
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.content()))),
            (ERROR_HEADER, self.message),
        ]
        for name, value in self.headers.items():
            pairs = [pair for pair in pairs if pair[0].lower() != name.lower()]
            pairs.append((name, value))
        return pairs


def forced_refusal(
    status: int, headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> Refusal:
    """The refusal a test asks for: section 2's header and code for ``status``."""
    message, code = REFUSALS.get(status, ("Refused", "UNKNOWN"))
    return Refusal(status, message, code, dict(headers or {}), body)


@attrs.frozen
class Admitted:
    """An upgrade that may go ahead; it counts against ``key`` until released."""

    key: str


@attrs.define
class Gate:
    """Who may connect (sections 1, 2 and 6): the path, forced refusals, the API key, and
    the connections per key.

    A connection counts against its key from :meth:`admit` until :meth:`release`, whether or
    not the upgrade then completes.
    """

    api_keys: frozenset[str]
    max_per_key: int
    _per_key: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    _forced: collections.deque[Refusal] = attrs.field(init=False, factory=collections.deque)

    def refuse_next(self, refusal: Refusal, count: int = 1) -> None:
        """Answer the next ``count`` upgrade requests on the right path with ``refusal``."""
        self._forced.extend([refusal] * count)

    def admit(self, path: str, authorization: Sequence[str]) -> Refusal | Admitted:
        """Decide an upgrade request.

        Args:
            path: the request target, query included.
            authorization: every ``Authorization`` header of the request.

        Returns:
            The refusal to answer with, or the admission (then counted against its key).
        """
        if path.split("?", 1)[0] != PATH:
            return Refusal(404, "Not found", "NOT_FOUND")
        if self._forced:
            return self._forced.popleft()
        scheme, _, key = ("", "", "")
        if len(authorization) == 1:  # several Authorization headers: none is believed
            scheme, _, key = authorization[0].partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or key not in self.api_keys:
            return Refusal(401, "Invalid API key", CODE_UNAUTHORIZED)
        if self._per_key[key] >= self.max_per_key:  # section 6
            message = f"Connection limit of {self.max_per_key} per API key reached"
            return Refusal(429, message, CODE_CONNECTION_LIMIT)
        self._per_key[key] += 1
        return Admitted(key)

    def release(self, key: str) -> None:
        """An admitted connection ended: it no longer counts against its key."""
        self._per_key.subtract([key])

    def connections(self, key: str) -> int:
        """How many admitted connections count against ``key`` now."""
        return self._per_key[key]
