"""The subscription requests in flight: their ids, the order sent, which one an answer is for.

Pure (no I/O; a test checks the imports): part of the protocol core, used only by
:class:`~c2sync._protocol.ClientProtocol` under the shell's one lock, which builds and
sends the frames.

Guarantees (docs/api-contract.md "Subscribing" and "Servers that read the docs
differently"):

- every request sent has a fresh ``request_id``; a caller waits on its first request's id
  (``answer_id``), whatever retries followed;
- an answer carrying a ``request_id`` goes to that request; one without goes to the oldest
  request it can answer (docs/protocol.md section 6: the server answers in order), an ack
  that names its pair only to a request for that pair;
- a request refused for ``resume_from``'s JSON type is sent once more in the other type
  (:meth:`Requests.retry`), and the type that worked is kept for the client's life;
- timed-out requests are remembered so that a late answer is recognised and satisfies
  nobody else, at most :data:`MAX_FORGOTTEN` of them.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator

import attrs

from ._spec import CODE_INVALID_PARAMETER, SUBSCRIBE
from .messages import ErrorMessage, Message, SubscriptionAck

__all__ = ["MAX_FORGOTTEN", "Request", "Requests", "default_request_ids", "refuses_resume_from"]

logger = logging.getLogger("c2sync.protocol")

Pair = tuple[str, int]

# Forgotten (timed-out) requests are remembered so a late answer is recognised, not
# mistaken for another request's; bounded so a server that never answers cannot grow it.
MAX_FORGOTTEN = 1000


@attrs.define
class Request:
    """One ``subscription.request`` sent and not answered yet."""

    request_id: str  # on the wire: fresh for every request sent, a retry included
    action: str
    channel: str
    strategy_id: int
    resume_from: int | None
    explicit_resume: bool
    waited: bool  # a caller blocks on the answer (False: a restore after reconnecting)
    forgotten: bool = False
    # The id the caller waits on: its first request's, whatever retries followed.
    answer_id: str = ""
    resume_as_string: bool = False  # resume_from went out as a JSON string
    retried: bool = False  # already sent again with resume_from in the other JSON type
    stamp: str = ""  # the timestamp it carried, as sent
    # What Streams.expect_replay said of an explicit resume_from (None: not asked).
    replay_mode: str | None = None


def default_request_ids() -> Iterator[str]:
    """``c2s-<48 random bits>-1``, ``-2``...: unique per client and short (section 3)."""
    prefix = os.urandom(6).hex()
    return (f"c2s-{prefix}-{n}" for n in itertools.count(1))


class Requests:
    """The requests in flight, in the order sent.

    Args:
        request_ids: where request ids come from (None: :func:`default_request_ids`).
    """

    def __init__(self, request_ids: Iterator[str] | None = None) -> None:
        self._ids = request_ids if request_ids is not None else default_request_ids()
        self._outstanding: dict[str, Request] = {}  # in the order sent
        # The JSON type of resume_from that the server took last: a number (the docs'
        # example) until a server refuses it and takes a string (their field table).
        self.resume_as_string = False

    def new(
        self,
        action: str,
        channel: str,
        strategy_id: int,
        resume_from: int | None,
        explicit: bool,
        waited: bool,
    ) -> Request:
        """A request about to be sent, with a fresh id, in the resume_from form kept."""
        request_id = next(self._ids)
        request = Request(request_id, action, channel, strategy_id, resume_from, explicit, waited)
        request.answer_id = request_id
        request.resume_as_string = self.resume_as_string
        self._outstanding[request_id] = request
        return request

    def retry(self, request: Request) -> Request:
        """``request`` (answered by a refusal of its ``resume_from``) once more, with
        ``resume_from`` in the other JSON type and a fresh id; its caller keeps waiting on
        the first id."""
        again = attrs.evolve(
            request,
            request_id=next(self._ids),
            resume_as_string=not request.resume_as_string,
            retried=True,
        )
        self._outstanding[again.request_id] = again
        return again

    def answered(self, message: Message, ack: SubscriptionAck | None) -> Request | None:
        """The request ``message`` (an ack, or an error when ``ack`` is None) answers, taken
        out of the requests in flight; None when it answers none."""
        request = self._find(message, ack)
        if request is not None:
            del self._outstanding[request.request_id]
            if ack is not None and request.resume_from and request.retried:
                # The other JSON type of resume_from worked: kept for the client's life.
                self.resume_as_string = request.resume_as_string
                logger.info(
                    "the server took resume_from as a JSON %s; sending it so from now on",
                    "string" if request.resume_as_string else "number",
                )
        return request

    def _find(self, message: Message, ack: SubscriptionAck | None) -> Request | None:
        if message.request_id is not None:
            return self._outstanding.get(message.request_id)
        for request in self._outstanding.values():
            # Without a request_id the server answers in order (docs/protocol.md section 6);
            # an ack that names its pair must match it.
            if ack is None or (
                ack.action in (None, request.action)
                and ack.channel in (None, request.channel)
                and ack.strategy_id in (None, request.strategy_id)
            ):
                return request
        return None

    def forget(self, answer_id: str) -> None:
        """The caller of ``answer_id`` stopped waiting (timeout): a late answer will satisfy
        nobody, though a late ack still updates the subscriptions."""
        outstanding = self._outstanding
        request = next((r for r in outstanding.values() if r.answer_id == answer_id), None)
        if request is not None:
            request.forgotten = True
            forgotten = [r for r in outstanding.values() if r.forgotten]
            for stale in forgotten[: max(0, len(forgotten) - MAX_FORGOTTEN)]:
                del outstanding[stale.request_id]

    def subscribing(self, held: dict[Pair, None]) -> set[Pair]:
        """Pairs with a subscribe under way that the server does not hold yet."""
        return {
            (r.channel, r.strategy_id)
            for r in self._outstanding.values()
            if r.action == SUBSCRIBE and (r.channel, r.strategy_id) not in held
        }

    def lost(self) -> list[str]:
        """The connection is gone, and every request with it. Returns the ids the callers
        still waiting wait on."""
        failed = [r.answer_id for r in self._outstanding.values() if r.waited and not r.forgotten]
        self._outstanding.clear()
        return failed


def refuses_resume_from(error: ErrorMessage) -> bool:
    """Whether ``error`` refuses a request's ``resume_from``: a field that names it
    (ResumeFrom, resume_from, any case), a message that mentions it, or
    ``INVALID_PARAMETER`` naming no field (docs/api-contract.md "Servers that read the docs
    differently")."""
    for detail in error.errors or (error,):
        field = (detail.field or "").replace("_", "").lower()
        if field == "resumefrom":
            return True
        text = (detail.message or "").replace("_", "").replace(" ", "").lower()
        if "resumefrom" in text:
            return True
        if not detail.field and (detail.code or "").upper() == CODE_INVALID_PARAMETER:
            return True
    return False
