"""Connect, then wait while the client answers the server's heartbeats in the background.

    export C2_API_KEY=...            # your key (or the emulator's: c2sync emulator)
    export C2_WS_URL=ws://127.0.0.1:8765/ws   # optional; the real service by default
    python samples/connect_and_wait.py --seconds 60
"""

import argparse
import os
import time

import c2sync

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seconds", type=float, default=60.0, help="how long to stay connected")
args = parser.parse_args()

url = os.environ.get("C2_WS_URL", c2sync.DEFAULT_URL)
try:
    # connect() returns once the server has said connection.connected; the key comes from
    # C2_API_KEY. Nothing to do to keep the connection alive: heartbeats are answered by the
    # client's own thread.
    client = c2sync.connect(url=url)
except c2sync.AuthenticationError:
    raise SystemExit("the API key was refused (check C2_API_KEY)") from None

with client:
    print("connected:", repr(client))
    time.sleep(args.seconds)  # your program does its own work here
# Read the counters once closed: while open, the client's thread may be counting a heartbeat
# between the two reads below.
stats = client.stats
print(f"heartbeats received: {stats.heartbeats}, answered: {stats.acks_sent}")
print(f"last heartbeat: {stats.last_heartbeat}")
print("closed:", repr(client))
