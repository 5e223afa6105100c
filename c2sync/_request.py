"""What goes on the wire when a link opens: the URL checked once, the upgrade request built
from checked fields. Pure (no I/O, no threads; a test checks the imports).

Called by :meth:`~c2sync._options.Options.create` on the user's thread, so that a URL or
a key that cannot go out is a ``ValueError`` when the client is built, and again by the
handshake (:func:`c2sync._handshake.upgrade`) on the thread that connects, just before
the bytes go out: nothing a user passes reaches the wire unchecked (docs/security.md
"What is refused before anything is sent"). As ``http.client`` does, control characters
(CR, LF, NUL, the other C0 characters and DEL) are refused in the request target and in
header values; a host goes out IDNA-encoded (``xn--...``). Every error names the field,
never its value, and chains nothing (``raise ... from None``): a ``UnicodeEncodeError``
would carry the whole text it failed on, secrets included.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from ._spec import AUTH_HEADER

__all__ = ["Target", "check_field", "upgrade_request"]

# C0 controls, DEL and the C1 controls: never in a header value or a request line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# What a host may hold once IDNA-encoded: letters, digits, "-", "." and "_" (seen in the
# wild), ":" and "%" of an IPv6 address and its zone.
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")
# What a request target keeps as it is (RFC 3986 reserved and unreserved characters, and
# "%" of escapes already made); anything else is percent-encoded as UTF-8.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


def _refuse_controls(name: str, value: str) -> None:
    if _CONTROL.search(value):
        raise ValueError(f"{name} must not contain control characters (CR, LF, NUL, ...)")


def check_field(name: str, value: str) -> bytes:
    """``value`` as it goes out in a header, checked.

    Args:
        name: what the value is, for the error (``"api_key"``); never the value itself.

    Raises:
        ValueError: a control character, leading or trailing whitespace, or a character
            UTF-8 cannot encode (a lone surrogate from an undecodable environment
            variable).
    """
    _refuse_controls(name, value)
    if value != value.strip():
        raise ValueError(f"{name} must not start or end with whitespace")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} holds a character that cannot be encoded") from None


def _ascii_host(host: str) -> str:
    """``host`` as it goes out in ``Host`` and ``CONNECT``: IDNA-encoded (punycode)."""
    try:
        name = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("url has a host that is not a valid host name") from None
    if not _HOST.fullmatch(name):
        raise ValueError("url has a host that is not a valid host name")
    return name


class Target(NamedTuple):
    """Where a link goes, from its URL (:meth:`from_url`).

    Attributes:
        host: the host as the URL names it (for the resolver, TLS and messages).
        port: the port (the scheme's default when the URL names none).
        secure: ``wss://``.
        resource: path and query of the upgrade request, percent-encoded.
        name: the host as it goes out: ASCII, IDNA-encoded.
    """

    host: str
    port: int
    secure: bool
    resource: str
    name: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        """Check ``url`` and split it.

        Raises:
            ValueError: not a ``ws://`` or ``wss://`` URL with a host; any whitespace or
                control character anywhere in it (``urlsplit`` would strip some and keep
                others, so what is connected to and what is checked could differ); a port
                that is 0 or out of range; a host or path that cannot be encoded. The
                message never quotes the URL (its user part may hold a password).
        """
        if not isinstance(url, str):
            raise ValueError("url must be a ws:// or wss:// URL")
        if any(c.isspace() for c in url):
            raise ValueError("url must not contain whitespace")
        _refuse_controls("url", url)
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):  # urlsplit lowers the scheme
            raise ValueError("url must be a ws:// or wss:// URL")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("url has a port out of range (1-65535)") from None
        if port == 0:
            raise ValueError("url has a port out of range (1-65535)")
        host = parts.hostname
        if not host:
            raise ValueError("url has no host")
        secure = parts.scheme == "wss"
        try:
            resource = quote(parts.path or "/", safe=_TARGET_SAFE)
            if parts.query:
                resource += "?" + quote(parts.query, safe=_TARGET_SAFE)
        except UnicodeEncodeError:
            raise ValueError("url holds a character that cannot be encoded") from None
        return cls(host, port or (443 if secure else 80), secure, resource, _ascii_host(host))

    @property
    def authority(self) -> str:
        """``host[:port]`` for ``Host`` and ``CONNECT`` (an IPv6 address in brackets)."""
        return f"[{self.name}]" if ":" in self.name else self.name

    def host_header(self) -> str:
        """The ``Host`` value of the upgrade: the port only when not the default."""
        if self.port == (443 if self.secure else 80):
            return self.authority
        return f"{self.authority}:{self.port}"


def upgrade_request(target: Target, ws_key: str, api_key: str) -> bytes:
    """The upgrade request (RFC 6455 4.1), the key in its ``Authorization`` header.

    Raises:
        ValueError: the key or the URL cannot go out (:func:`check_field`).
    """
    resource = target.resource
    _refuse_controls("url", resource)
    if not resource.isascii() or " " in resource:
        raise ValueError("url holds a character that cannot be encoded")
    return b"".join(
        (
            f"GET {resource} HTTP/1.1\r\n"
            f"Host: {target.host_header()}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {ws_key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"{AUTH_HEADER}: Bearer ".encode("ascii"),
            check_field("api_key", api_key),
            b"\r\n\r\n",
        )
    )
