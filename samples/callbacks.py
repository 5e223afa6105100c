"""Handle messages with callbacks while run_forever() keeps the program alive.

Callbacks run on the client's dispatcher thread, one at a time, in arrival order. The
main thread prints too, so printing goes through one lock: two threads calling print()
at once can interleave their text and newlines on one line.

    python samples/callbacks.py 12345678                 # until Ctrl-C
    python samples/callbacks.py 12345678 --count 10      # stop after 10 signals
    python samples/callbacks.py 12345678 --seconds 30    # stop after 30 seconds
"""

import argparse
import os
import threading

import c2sync

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("strategy_id", type=int, help="the strategy to follow")
parser.add_argument("--count", type=int, help="stop after this many signals")
parser.add_argument("--seconds", type=float, help="stop after this many seconds")
args = parser.parse_args()

url = os.environ.get("C2_WS_URL", c2sync.DEFAULT_URL)
client = c2sync.Client(url=url)  # the key comes from C2_API_KEY; not connected yet
signals = 0
print_lock = threading.Lock()


def say(text: str) -> None:
    with print_lock:  # whole lines, whichever thread prints
        print(text, flush=True)


def on_signal(signal: c2sync.Signal) -> None:
    global signals
    signals += 1
    symbol = signal.payload.get("C2Symbol", {}).get("FullSymbol")
    say(f"signal seq_id={signal.seq_id} {symbol}")
    if args.count is not None and signals >= args.count:
        client.close()  # safe from inside a callback; run_forever() then returns


def on_positions(update: c2sync.Positions) -> None:
    say(f"positions of {update.strategy_id}: {len(update.payload.get('Positions', []))}")


def on_gap(gap: c2sync.Gap) -> None:
    say(f"GAP after seq_id {gap.from_seq}: {gap.message} (fetch the rest from the REST API)")


def on_state(state: c2sync.State) -> None:
    say(f"state: {state.name}")


# Register the callbacks first, so nothing arrives before they are in place.
client.on(c2sync.SIGNAL, on_signal)
client.on(c2sync.POSITIONS, on_positions)
client.on("gap", on_gap)
client.on_state(on_state)  # CONNECTING, OPEN, RECONNECTING, CLOSED
client.connect()
# Signals last: with --count, on_signal may close the client as soon as signals flow, and a
# subscribe() still waiting for its answer would then raise ConnectionClosed.
client.subscribe(c2sync.POSITIONS, args.strategy_id)
client.subscribe(c2sync.SIGNAL, args.strategy_id)
say(f"subscribed to strategy {args.strategy_id}")

if args.seconds is not None:
    timer = threading.Timer(args.seconds, client.close)
    timer.daemon = True
    timer.start()
try:
    client.run_forever()  # returns after close(); Ctrl-C raises KeyboardInterrupt here
except KeyboardInterrupt:
    pass
finally:
    client.close()
say(f"done: {signals} signal(s); {client!r}")
