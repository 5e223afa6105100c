"""The watchdog: one thread that sleeps until a deadline, then cuts the link.

Three deadlines: the server's heartbeat deadline (docs/protocol.md section 5), which the
session reports through ``deadline()``; a ``close()``'s grace (:meth:`Watchdog.arm_close`);
and the bound of a send in progress (``send_deadline()``, the link's
:attr:`~c2sync._link.Link.send_deadline`), looked at whenever the watchdog wakes: the link
wakes it when a send finds another one in progress (a peer that stopped reading blocks
the first), so the hot path of an ack pays no wake-up.
The reader thread moves the heartbeat deadline on with every heartbeat without waking this
thread: it wakes at the old deadline, finds the new one and sleeps again, so an idle client
costs one wake-up per heartbeat at most and nothing polls. ``close()`` and the session call
:meth:`Watchdog.wake` and :meth:`Watchdog.stop` from their threads.

Cutting (shutting the socket down) wakes the blocked reader at once and is safe on TLS
even while a sender is blocked (docs/websocket-client-facts.md "Timeouts"), which is why
the socket has no timeout once open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Watchdog"]


class Watchdog:
    """Enforces the heartbeat deadline and a close's grace.

    Args:
        deadline: the current heartbeat deadline (``time.monotonic()``), or None.
        expire: called at that deadline with the time; returns whether the link is
            really dead (the session checks again under its lock) and must be cut.
        cut: shuts the current link down, with the reason.
        send_deadline: when the send in progress must have finished, or None.
    """

    def __init__(
        self,
        deadline: Callable[[], float | None],
        expire: Callable[[float], bool],
        cut: Callable[[str], None],
        send_deadline: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._deadline = deadline
        self._send_deadline = send_deadline
        self._expire = expire
        self._cut = cut
        self._cond = threading.Condition(threading.Lock())
        self._close_deadline: float | None = None
        self._send_cut: float | None = None  # the send deadline already acted on
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="c2sync-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """Look at the deadlines again (a new link, a reconnect)."""
        with self._cond:
            self._cond.notify()

    def arm_close(self, grace: float) -> None:
        """Cut the link ``grace`` seconds from now unless it ends before."""
        with self._cond:
            self._close_deadline = time.monotonic() + grace
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while not self._stopped:
                now = time.monotonic()
                heartbeat = self._deadline()
                sending = self._send_deadline()
                if sending is not None and sending == self._send_cut:
                    sending = None  # cut already; its sender is on its way out
                deadlines = [
                    d for d in (heartbeat, self._close_deadline, sending) if d is not None
                ]
                if not deadlines:
                    cond.wait()
                    continue
                remaining = min(deadlines) - now
                if remaining > 0:
                    cond.wait(remaining)
                    continue
                if self._close_deadline is not None and now >= self._close_deadline:
                    self._close_deadline = None
                    self._cut("close grace over")
                elif sending is not None and now >= sending:
                    self._send_cut = sending
                    self._cut("a send did not finish in time (the peer stopped reading)")
                elif heartbeat is not None and now >= heartbeat and self._expire(now):
                    self._cut("heartbeat timeout")
