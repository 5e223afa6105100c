"""Subscribe to a strategy's signals and read them with recv(), one at a time.

    python samples/subscribe_recv.py 12345678 --count 5
"""

import argparse
import os

import c2sync

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("strategy_id", type=int, help="the strategy to follow")
parser.add_argument("--count", type=int, default=5, help="stop after this many messages")
parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
args = parser.parse_args()

url = os.environ.get("C2_WS_URL", c2sync.DEFAULT_URL)
with c2sync.connect(url=url) as client:  # the key comes from C2_API_KEY
    ack = client.subscribe(c2sync.SIGNAL, args.strategy_id)
    print(f"subscribed: {ack.channel} {ack.strategy_id}")
    for _ in range(args.count):
        try:
            message = client.recv(timeout=args.timeout)
        except TimeoutError:
            print(f"nothing for {args.timeout:g} s")
            break
        if isinstance(message, c2sync.Signal):
            # payload is the server's JSON object, complete and unchanged (read-only).
            symbol = message.payload.get("C2Symbol", {}).get("FullSymbol")
            print(f"signal seq_id={message.seq_id} strategy={message.strategy_id} {symbol}")
        else:
            print(f"{message.msg_type}: {message}")
