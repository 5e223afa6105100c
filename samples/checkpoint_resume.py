"""Resume where the last run stopped: a checkpoint file keeps the last processed seq_id.

Run it, stop it, run it again: the second run first receives the signals published while it
was not running (the server replays up to 1000 of them).

    python samples/checkpoint_resume.py 12345678 --checkpoint state.json --count 5
"""

import argparse
import os

import c2sync

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("strategy_id", type=int, help="the strategy to follow")
parser.add_argument("--checkpoint", default="c2sync-checkpoint.json", help="the checkpoint file")
parser.add_argument("--count", type=int, default=5, help="stop after this many signals")
parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
args = parser.parse_args()

last = c2sync.FileCheckpoint(args.checkpoint).load().get(args.strategy_id)
print(f"checkpoint: last processed seq_id {last}" if last else "checkpoint: none yet")

url = os.environ.get("C2_WS_URL", c2sync.DEFAULT_URL)
# With checkpoint=, a signal counts as processed once you ask for the next one (or the
# client closes cleanly), and subscribe() without resume_from resumes from the file.
with c2sync.connect(url=url, checkpoint=args.checkpoint) as client:
    client.subscribe(c2sync.SIGNAL, args.strategy_id)
    for _ in range(args.count):
        try:
            message = client.recv(timeout=args.timeout)
        except TimeoutError:
            print(f"nothing for {args.timeout:g} s")
            break
        if isinstance(message, c2sync.Gap):
            print(f"GAP after seq_id {message.from_seq}: fetch the missed signals from REST")
            continue
        print(f"processing signal seq_id={message.seq_id}")
        # ... act on it here. If this process crashes now, the signal comes again on the next
        # run (at-least-once): make your handling idempotent, e.g. keyed on seq_id.
# Leaving the with block cleanly saved the last signal as processed.
print(f"checkpoint saved: {c2sync.FileCheckpoint(args.checkpoint).load()}")
