"""A client's options: one frozen value, validated once, shared by every room.

Built by :class:`~c2sync.client.Client` (and so :func:`~c2sync.client.connect`) from the
keyword arguments docs/api-contract.md "Connecting" names; the session and the link read
it and never change it. Called from the user's thread only, at construction. The key is kept out of
``repr()`` (docs/api-contract.md "Observability").
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from ._framing import DEFAULT_MAX_SIZE
from ._proxy import parse_proxy, safe_url
from ._request import Target, check_field
from ._spec import DEFAULT_URL, HEARTBEAT_TIMEOUT
from ._sql import URL_PREFIXES, checkpoint_from_url
from .checkpoint import Checkpoint, FileCheckpoint
from .reconnect import ReconnectPolicy

__all__ = ["API_KEY_ENV", "Options", "seams"]

API_KEY_ENV = "C2_API_KEY"

logger = logging.getLogger("c2sync")

# The test seams of the clients built inside ``with seams(...)`` (not Client arguments: a
# user never needs them, so they stay out of its signature and its documentation).
_SEAMS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("c2sync_seams")


@contextmanager
def seams(
    *, link_factory: Callable[[Options], Any] | None = None, correct_clock: bool = True
) -> Iterator[None]:
    """Clients built in this block (in this thread or context) use these test seams.

    Args:
        link_factory: builds the link of each connection attempt from the options (None:
            the real WebSocket link).
        correct_clock: False sends the local clock unchanged, whatever the measured skew.
    """
    token = _SEAMS.set({"link_factory": link_factory, "correct_clock": correct_clock})
    try:
        yield
    finally:
        _SEAMS.reset(token)


@attrs.frozen
class Options:
    """Everything a client was asked to do, checked (see :meth:`create`).

    Attributes:
        api_key: the key (never in ``repr()``).
        url: the ``ws://`` or ``wss://`` URL.
        connect_timeout: one total deadline for a connect, seconds.
        heartbeat_timeout: seconds without a server heartbeat before the link is dead.
        reconnect: whether lost connections are re-opened.
        policy: the reconnect policy.
        max_queue: the recv() queue's bound.
        checkpoint: the checkpoint store, or None.
        proxy: ``"http://[user:pass@]host:port"`` or None.
        ssl_context: an ``ssl.SSLContext`` or None (the default verifying one).
        max_message_size: the largest message accepted, in bytes (all its fragments).
        link_factory: builds the link for each connection attempt (a test seam; None: the
            real WebSocket link).
        correct_clock: stamp outgoing messages with the measured clock skew corrected
            (a test seam: False sends the local clock as it is).
    """

    api_key: str = attrs.field(repr=False)
    url: str = DEFAULT_URL
    connect_timeout: float = 10.0
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    reconnect: bool = True
    policy: ReconnectPolicy = attrs.field(factory=ReconnectPolicy)
    max_queue: int = 10_000
    checkpoint: Checkpoint | None = None
    proxy: str | None = attrs.field(default=None, repr=False)
    ssl_context: Any = None
    max_message_size: int = DEFAULT_MAX_SIZE
    link_factory: Callable[[Options], Any] | None = attrs.field(default=None, repr=False)
    correct_clock: bool = True

    @property
    def safe_url(self) -> str:
        """The URL for messages: without its query string or fragment (which could carry a
        secret), its user part (``user:password@``) as ``***@``."""
        return safe_url(self.url)

    @classmethod
    def create(
        cls,
        api_key: str | None,
        *,
        url: str = DEFAULT_URL,
        connect_timeout: float = 10.0,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        reconnect: bool = True,
        max_queue: int = 10_000,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
        proxy: str | None = None,
        ssl_context: Any = None,
        reconnect_policy: ReconnectPolicy | None = None,
        max_message_size: int = DEFAULT_MAX_SIZE,
    ) -> Options:
        """Check the user's arguments and build the value, with the test seams of the
        enclosing :func:`seams` block, if any.

        Raises:
            ValueError: no API key, or an argument out of range; a key or URL that cannot
                go out as it is (a control character, whitespace, a character that cannot
                be encoded: see :mod:`c2sync._request`), a URL without a host or with port 0.
                The message names the argument, never its value.
            TypeError: an argument of the wrong type.
        """
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ValueError(f"no API key: pass api_key= or set {API_KEY_ENV}")
        if not isinstance(api_key, str):
            raise TypeError("api_key must be a str")
        check_field("api_key", api_key)
        target = Target.from_url(url)
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("heartbeat_timeout", heartbeat_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if type(max_queue) is not int or max_queue < 1:
            raise ValueError("max_queue must be a positive int")
        store: Checkpoint | None
        if checkpoint is None or isinstance(checkpoint, Checkpoint):
            store = checkpoint
        elif isinstance(checkpoint, str) and checkpoint.startswith(URL_PREFIXES):
            store = checkpoint_from_url(checkpoint)
        elif isinstance(checkpoint, (str, os.PathLike)):
            store = FileCheckpoint(checkpoint)
        else:
            raise TypeError("checkpoint must be a path or an object with load() and save()")
        if proxy is not None and not isinstance(proxy, str):
            raise TypeError("proxy must be a str ('http://host:port', or '' for none) or None")
        if proxy:
            parse_proxy(proxy)  # a bad proxy URL is a ValueError now, not at connect()
        if type(max_message_size) is not int or max_message_size < 1:
            raise ValueError("max_message_size must be a positive int (bytes)")
        seam = _SEAMS.get({})
        link_factory = seam.get("link_factory")
        if link_factory is not None and not callable(link_factory):
            raise TypeError("link_factory must be callable")
        if target.secure:
            _warn_unverified(ssl_context)
        return cls(
            api_key=api_key,
            url=url,
            connect_timeout=float(connect_timeout),
            heartbeat_timeout=float(heartbeat_timeout),
            reconnect=bool(reconnect),
            policy=reconnect_policy or ReconnectPolicy(),
            max_queue=max_queue,
            checkpoint=store,
            proxy=proxy,
            ssl_context=ssl_context,
            max_message_size=max_message_size,
            link_factory=link_factory,
            correct_clock=bool(seam.get("correct_clock", True)),
        )


def _warn_unverified(context: Any) -> None:
    """A WARNING when the user's TLS context turns the checks off (docs/security.md "TLS":
    they stay on unless the user's own context says otherwise; say so when it does)."""
    if context is None:
        return
    import ssl  # here, not at import: a caller with a context of its own has it loaded

    off = []
    if getattr(context, "verify_mode", ssl.CERT_REQUIRED) == ssl.CERT_NONE:
        off.append("certificate verification (verify_mode=CERT_NONE)")
    if getattr(context, "check_hostname", True) is False:
        off.append("host name checks (check_hostname=False)")
    if off:
        logger.warning(
            "the ssl_context given turns off %s: anyone on the path can read the key",
            " and ".join(off),
        )
