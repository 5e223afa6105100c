"""Handle what can go wrong: refused connections, refused subscriptions, gaps, overflow.

    python samples/errors_and_gaps.py 12345678 --resume-from 100 --count 20

Exit status: 0 fine, 2 bad key, 3 refused for now (429/503), 4 network, 5 subscription refused.
"""

import argparse
import os
import sys

import c2sync

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("strategy_id", type=int, help="the strategy to follow")
parser.add_argument("--resume-from", type=int, help="replay the signals after this seq_id")
parser.add_argument("--count", type=int, default=10, help="stop after this many messages")
parser.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
args = parser.parse_args()

url = os.environ.get("C2_WS_URL", c2sync.DEFAULT_URL)


def fail(text: str, status: int) -> None:
    print(text, file=sys.stderr)
    sys.exit(status)


# 1. Connecting: the handshake's answer is an exception you can act on.
try:
    client = c2sync.connect(url=url, connect_timeout=10)
except c2sync.AuthenticationError as exc:  # 401: never retry
    fail(f"the API key was refused: {exc.message}", 2)
except c2sync.RateLimitError as exc:  # 429: too fast, or 10 connections for this key
    wait = f"{exc.retry_after:g}" if exc.retry_after is not None else "a few"
    fail(f"rate limited ({exc.code}); retry in {wait} s", 3)
except c2sync.HandshakeError as exc:  # 503 and any other refusal
    fail(f"refused: HTTP {exc.status} {exc.message}", 3)
except (TimeoutError, OSError, c2sync.ConnectionClosed) as exc:
    fail(f"cannot connect: {exc}", 4)

with client:
    # 2. Subscribing: a refusal is a ServerError; bad arguments are a ValueError.
    try:
        client.subscribe(c2sync.SIGNAL, args.strategy_id, resume_from=args.resume_from)
    except c2sync.ServerError as exc:
        fail(f"subscription refused: {exc.code} {exc.message}", 5)
    print(f"subscribed to {args.strategy_id}", flush=True)
    if args.resume_from:
        # The server replays only the seq_ids above resume_from: from a point at or past its
        # latest signal, nothing comes until the strategy publishes again. Say so now
        # rather than wait in silence.
        print(
            f"replaying the signals after seq_id {args.resume_from}; if the strategy has "
            f"published none after it, nothing arrives until its next signal "
            f"(waiting up to {args.timeout:g} s per message)",
            file=sys.stderr,
            flush=True,
        )

    # 3. Receiving: gaps, overflow and server errors arrive in the same loop.
    for _ in range(args.count):
        try:
            message = client.recv(timeout=args.timeout)
        except TimeoutError:
            why = (
                f": nothing after seq_id {args.resume_from} yet, so nothing to replay"
                if args.resume_from
                else ""
            )
            print(f"no message within {args.timeout:g} s{why}")
            break
        except c2sync.QueueOverflow as exc:
            # Nobody read fast enough: the oldest messages were dropped, never silently.
            print(f"{exc.dropped} dropped; resuming from {exc.last_seq}")
            for strategy_id, seq_id in exc.last_seq.items():
                client.subscribe(c2sync.SIGNAL, strategy_id, resume_from=seq_id)
            continue
        if isinstance(message, c2sync.Gap):
            # More was missed than the server replays (1000): fetch the rest from REST.
            print(
                f"GAP: strategy {message.strategy_id} after seq_id {message.from_seq}: "
                f"{message.message}"
            )
        elif isinstance(message, c2sync.ErrorMessage):
            print(f"server error: {message.code} {message.message}")
        elif isinstance(message, c2sync.Signal):
            print(f"signal seq_id={message.seq_id}")
        else:
            print(f"{message.msg_type}")
