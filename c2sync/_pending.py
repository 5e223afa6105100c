"""Pending requests: the callers blocked on a ``subscription.request``'s answer.

User threads register a request (:meth:`Pending.add`) and wait for it
(:meth:`Pending.wait`); the reader thread answers it (:meth:`Pending.answer`) when the
protocol core matches an ack or an error to it, or fails it when the link is lost; the
session fails every one at the end (:meth:`Pending.fail_all`).

Guarantees (docs/api-contract.md "Subscribing"): a caller waits at most until its deadline;
a request that timed out is forgotten here (the protocol core keeps recognising its late
answer, so it never satisfies another request); requests are registered and sent in one
order (:attr:`Pending.order`), so answers without a ``request_id`` matched oldest-first
(docs/protocol.md section 6) find the right caller. Memory is bounded by the callers
waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .exceptions import ConnectionClosed
from .messages import SubscriptionAck

__all__ = ["Pending", "RequestLost", "Waiter"]

logger = logging.getLogger("c2sync")

# register(deadline) -> (waiter, frame, send): waits (bounded) until the client is open,
# builds the request and registers its waiter under the session's lock, atomically with
# the protocol core; send(frame) then writes it.
Register = Callable[[float], "tuple[Waiter, str, Callable[[str], None]]"]


class RequestLost(ConnectionClosed):
    """The link was lost before a request was answered (it is sent again if reconnecting)."""


class Waiter:
    """One caller blocked on a request's answer."""

    __slots__ = ("answer", "error", "event", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.event = threading.Event()
        self.answer: SubscriptionAck | None = None
        self.error: BaseException | None = None


class Pending:
    """The requests callers are waiting for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, Waiter] = {}
        self.order = threading.Lock()  # held from registering a request to sending it

    def add(self, request_id: str) -> Waiter:
        waiter = Waiter(request_id)
        with self._lock:
            self._waiters[request_id] = waiter
        return waiter

    def answer(
        self,
        request_id: str,
        ack: SubscriptionAck | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Wake the caller of ``request_id`` (if it still waits) with its answer."""
        with self._lock:
            waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            waiter.answer, waiter.error = ack, error
            waiter.event.set()

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)

    def request(
        self,
        what: str,
        timeout: float,
        register: Register,
        forget: Callable[[str], None],
        resend: bool,
    ) -> SubscriptionAck:
        """Send a request and wait for its answer, sending it again on a new link if the
        link is lost before the answer and ``resend`` (subscribing is idempotent,
        docs/protocol.md section 6).

        Raises:
            TimeoutError: no answer within ``timeout``.
            ServerError: the server refused.
            ConnectionClosed: the link was lost and ``resend`` is off, or the client closed.
        """
        deadline = time.monotonic() + timeout
        while True:
            waiter = self._send(what, deadline, register, forget)
            if waiter is not None:
                if not self.wait(waiter, deadline, forget):
                    raise TimeoutError(f"no answer to {what} within {timeout:g} s")
                if not isinstance(waiter.error, RequestLost):
                    break
            if not resend:
                raise ConnectionClosed(None, "", f"the connection was lost before {what}'s answer")
            logger.info("connection lost before %s was answered; sending it again", what)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.answer is not None
        return waiter.answer

    def _send(
        self, what: str, deadline: float, register: Register, forget: Callable[[str], None]
    ) -> Waiter | None:
        """Register and send one request. Returns its waiter, or None when the send failed
        (the link is being lost)."""
        if not self.order.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"could not send {what} in time")
        try:
            waiter, frame, send = register(deadline)
            try:
                send(frame)
            except ConnectionClosed as exc:
                logger.debug("sending %s failed: %s", what, exc)
                forget(waiter.request_id)
                self.forget(waiter.request_id)
                return None
            except TimeoutError:  # another send held the link past the deadline
                forget(waiter.request_id)
                self.forget(waiter.request_id)
                raise TimeoutError(f"could not send {what} in time") from None
            return waiter
        finally:
            self.order.release()

    def wait(self, waiter: Waiter, deadline: float, forget: Callable[[str], None]) -> bool:
        """Wait for ``waiter``'s answer until ``deadline``; on expiry forget the request
        (``forget`` tells the protocol core) and return False."""
        if waiter.event.wait(max(0.0, deadline - time.monotonic())):
            return True
        forget(waiter.request_id)
        self.forget(waiter.request_id)
        return waiter.event.is_set()  # answered just now

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Wake every waiting caller with ``error()``."""
        with self._lock:
            waiters = list(self._waiters.values())
            self._waiters.clear()
        for waiter in waiters:
            waiter.error = error()
            waiter.event.set()
