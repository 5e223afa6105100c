"""Which HTTP proxy a connection goes through, and how to talk to it: pure functions.

Called by the link (on the thread that connects: the user's for ``connect()``, the reader's
for a reconnect) with the environment passed in; nothing here reads ``os.environ``, opens a
socket or logs. docs/api-contract.md "Clocks and proxies":

- :func:`resolve_proxy`: ``proxy=""`` disables proxies, a non-empty ``proxy`` string wins,
  ``proxy=None`` reads the environment as ``requests`` does: ``HTTPS_PROXY`` for ``wss://``
  (``HTTP_PROXY`` for ``ws://``), else ``ALL_PROXY``, lowercase names winning as in urllib's
  ``getproxies_environment`` (an empty lowercase one disables the uppercase one), and
  ``NO_PROXY`` (see :func:`bypasses_proxy`).
- :func:`parse_proxy`: the proxy URL checked and split into what a ``CONNECT`` needs (host,
  port, the ``Proxy-Authorization`` value), and :meth:`HttpProxy.connect_request`.
- :func:`redact_url`: the URL with its credentials replaced by ``***``, for every log line,
  repr and exception that names a proxy.

Guarantees: the credentials of a proxy URL appear in no ``repr()`` and no exception text from
here; every function is total on strings (a bad value is a ``ValueError`` naming the
redacted URL, never a crash or a leak).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import attrs

__all__ = [
    "HttpProxy",
    "bypasses_proxy",
    "parse_proxy",
    "proxy_from_environment",
    "redact_url",
    "resolve_proxy",
    "safe_url",
]

_DEFAULT_PORTS = {"ws": 80, "wss": 443, "http": 80, "https": 443}


def redact_url(url: str) -> str:
    """``url`` with any ``user:pass@`` (or ``token@``) replaced by ``***@``.

    Everything between the scheme and the last ``@`` goes, so a password holding an
    unescaped ``/``, ``?`` or ``@`` is hidden too (an ``@`` in a path or query hides more
    than needed: better too much than a leak).
    """
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    at = url.rfind("@")
    if at < start:
        return url
    return f"{url[:start]}***{url[at:]}"


def safe_url(url: str) -> str:
    """``url`` for a message or a log line: its user part (``user:password@``) as ``***@``
    (:func:`redact_url`), its query string and fragment (which can carry a password or a
    key) gone. The user part goes first: a password holding ``?`` or ``#`` is hidden whole.
    """
    return redact_url(url).split("?", 1)[0].split("#", 1)[0]


def _with_scheme(proxy: str) -> str:
    """``host:port`` as ``http://host:port`` (as ``requests`` reads a proxy without scheme)."""
    return proxy if "://" in proxy else f"http://{proxy}"


def proxy_from_environment(scheme: str, environ: Mapping[str, str]) -> str | None:
    """The proxy the environment names for ``scheme`` (``"https"``, ``"http"`` or ``"all"``),
    or None.

    The lowercase variable wins when it is set, even empty (which then means "no proxy"), as
    in urllib's ``getproxies_environment``; ``HTTP_PROXY`` is ignored when
    ``REQUEST_METHOD`` is set (a CGI process, where a client's ``Proxy:`` header becomes
    ``HTTP_PROXY``: CVE-2016-1000110), though ``http_proxy`` is not.
    """
    lower = environ.get(f"{scheme}_proxy")
    if lower is not None:
        return lower.strip() or None
    if scheme == "http" and "REQUEST_METHOD" in environ:
        return None
    upper = environ.get(f"{scheme.upper()}_PROXY", "").strip()
    return upper or None


def _split_entry(entry: str) -> tuple[str, int | None]:
    """A ``NO_PROXY`` entry as (host or network, port or None), lowercased."""
    entry = entry.lower()
    if entry.startswith("["):  # [v6]:port or [v6]
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:  # host:port (a bare IPv6 has several colons)
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, int(port) if port.isdigit() else None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _entry_matches(
    entry: str,
    host: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    port: int,
) -> bool:
    name, entry_port = _split_entry(entry)
    if entry_port is not None and entry_port != port:
        return False
    if address is not None:
        if "/" in name:  # a CIDR block, as requests reads them (IPv6 too here)
            try:
                return address in ipaddress.ip_network(name, strict=False)
            except ValueError:
                return False
        return _address(name) == address
    if name.startswith("*."):  # *.example.com: what Go and others accept for .example.com
        name = name[1:]
    name = name.lstrip(".").rstrip(".")
    return bool(name) and (host == name or host.endswith("." + name))


def bypasses_proxy(url: str, no_proxy: str | None) -> bool:
    """Whether ``url``'s host is exempt from proxies by a ``NO_PROXY`` value.

    As ``requests`` and urllib read it: comma-separated entries, spaces ignored, compared
    case-insensitively; ``*`` (alone) exempts every host; an entry matches its host and
    every subdomain (``example.com`` and ``.example.com`` both cover ``api.example.com``;
    ``*.example.com`` too); ``host:port`` matches only that port (the URL's, or its scheme's
    default: 443 for ``wss://``); an IP address matches itself and a CIDR block
    (``10.0.0.0/8``) the addresses in it. One deliberate difference from ``requests``,
    which matches plain string suffixes: ``example.com`` does not cover
    ``badexample.com`` (urllib and curl agree).
    """
    if no_proxy is None or not no_proxy.strip():
        return False
    if no_proxy.strip() == "*":
        return True
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return True  # nothing to proxy to (requests answers the same)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        port = 0
    address = _address(host)
    entries = (e.strip() for e in no_proxy.split(","))
    return any(_entry_matches(e, host, address, port) for e in entries if e)


def resolve_proxy(url: str, proxy: str | None, environ: Mapping[str, str]) -> str | None:
    """The proxy URL a connection to ``url`` goes through, or None for a direct one.

    Args:
        url: the ``ws://`` or ``wss://`` URL to connect to.
        proxy: what the user passed: None reads ``environ`` (``HTTPS_PROXY`` for
            ``wss://``, ``HTTP_PROXY`` for ``ws://``, then ``NO_PROXY``); ``""`` means no
            proxy; any other string is the proxy, whatever ``NO_PROXY`` says. ``ALL_PROXY``
            serves either scheme when its own variable is unset, as in ``requests``.
        environ: the environment (the link passes ``os.environ``).

    Returns:
        ``"http://[user:pass@]host:port"`` (``http://`` added when the value has no
        scheme), or None. Check it with :func:`parse_proxy`; show it with
        :func:`redact_url`.

    Raises:
        TypeError: ``proxy`` is neither None nor a string.
    """
    if proxy is not None:
        if not isinstance(proxy, str):
            raise TypeError("proxy must be a str ('http://host:port', or '' for none) or None")
        return _with_scheme(proxy.strip()) if proxy.strip() else None
    # The scheme as urlsplit reads it, as the link does (never the raw string's start).
    scheme = "https" if urlsplit(url).scheme == "wss" else "http"
    found = proxy_from_environment(scheme, environ)
    if found is None:  # requests' fallback for any scheme
        found = proxy_from_environment("all", environ)
    if found is None:
        return None
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY")
    return None if bypasses_proxy(url, no_proxy) else _with_scheme(found)


@attrs.frozen
class HttpProxy:
    """An HTTP proxy to tunnel through with ``CONNECT`` (RFC 9110 section 9.3.6).

    Attributes:
        host: the proxy's host name or address (no brackets).
        port: its port (80 when the URL names none, as urllib3 does for ``http://``).
        authorization: the ``Proxy-Authorization`` header value (``Basic ...``) when the URL
            carries credentials, else None. Never in ``repr()``.
        safe_url: the proxy URL with its credentials redacted, for messages and logs.
        credentials: what a proxy could echo of the credentials in clear (``user:pass``
            and ``pass``), to mask in its answers. Never in ``repr()``.
    """

    host: str
    port: int
    authorization: str | None = attrs.field(default=None, repr=False)
    safe_url: str = ""
    credentials: tuple[str, ...] = attrs.field(default=(), repr=False)

    def connect_request(self, host: str, port: int) -> bytes:
        """The ``CONNECT host:port`` request opening a tunnel to ``host``, headers and all.

        Args:
            host: the host as it goes out (ASCII: IDNA-encoded, see
                :class:`c2sync._request.Target`).

        Raises:
            ValueError: ``host`` holds characters that would break the request line.
        """
        if not host or not host.isascii() or any(c in host for c in " \r\n\t/@"):
            raise ValueError("not a host name for CONNECT")
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.authorization is not None:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _basic(user: str, password: str, safe: str) -> str:
    raw = f"{user}:{password}"
    try:
        data = raw.encode("latin-1")  # what requests and urllib3 send
    except UnicodeEncodeError:
        try:
            data = raw.encode("utf-8")  # RFC 7617's charset=UTF-8
        except UnicodeEncodeError:  # a lone surrogate; the error would quote the password
            raise ValueError(
                f"the proxy {safe!r} has credentials that cannot be encoded"
            ) from None
    return "Basic " + base64.b64encode(data).decode("ascii")


def parse_proxy(proxy: str) -> HttpProxy:
    """Check a proxy URL and split it (see :class:`HttpProxy`).

    ``user`` and ``pass`` are percent-decoded (``p%40ss`` is ``p@ss``), as ``requests``
    reads them.

    Raises:
        ValueError: not an ``http://host[:port]`` URL (HTTPS and SOCKS proxies are not
            supported), or one holding whitespace or a control character; the message
            shows the URL redacted.
    """
    safe = redact_url(proxy)
    if any(c.isspace() or c < " " or "\x7f" <= c <= "\x9f" for c in proxy.strip()):
        raise ValueError(f"proxy URL with whitespace or a control character: {safe!r}")
    try:
        parts = urlsplit(_with_scheme(proxy.strip()))
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ValueError(f"not a proxy URL: {safe!r}") from None
    if parts.scheme.lower() != "http":
        raise ValueError(
            f"unsupported proxy {safe!r}: only http:// proxies (HTTP CONNECT) are supported"
        )
    if not host:
        raise ValueError(f"proxy URL without a host: {safe!r}")
    if port == 0:
        raise ValueError(f"proxy URL with port 0: {safe!r}")
    authorization = None
    credentials: tuple[str, ...] = ()
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        authorization = _basic(user, password, safe)
        credentials = tuple(s for s in (f"{user}:{password}", password) if s)
    safe_url = redact_url(_with_scheme(proxy.strip()))
    return HttpProxy(host, port or 80, authorization, safe_url, credentials)
