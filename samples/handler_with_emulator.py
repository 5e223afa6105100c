"""Test your own signal handler against the local emulator: no key, no network.

Two ways, both usable from pytest (copy this file into your tests as test_handler.py):

1. Unit-test the handler on messages built with ``c2sync.parse_message`` (no socket).
2. Run it end to end: start an ``Emulator``, publish the payloads you want (or generated
   ones), connect the real client, and check what your handler did, including across a
   dropped connection.

    pip install ".[emulator]"      # from a checkout of c2sync
    python samples/handler_with_emulator.py
"""

import json
import queue

import c2sync
from c2sync.emulator import Emulator

STRATEGY = 12345678


# --- your code: turn a signal into an order for your broker -----------------------------
def handle_signal(signal: c2sync.Signal) -> dict[str, object]:
    payload = signal.payload
    side = {"1": "buy", "2": "sell"}[payload["Side"]]
    return {
        "seq_id": signal.seq_id,
        "symbol": payload["C2Symbol"]["FullSymbol"],
        "side": side,
        "quantity": payload["Quantity"],
    }


# --- 1. a unit test: no I/O at all --------------------------------------------------------
def test_handler_unit() -> None:
    text = json.dumps(
        {
            "msg_type": "strategy.signal",
            "id": "msg_1",
            "seq_id": 7,
            "timestamp": "2024-01-01T12:00:00Z",
            "v": 4,
            "payload": {
                "StrategyId": STRATEGY,
                "C2Symbol": {"FullSymbol": "AAPL"},
                "Side": "1",
                "Quantity": 10,
            },
        }
    )
    signal = c2sync.parse_message(text)
    assert isinstance(signal, c2sync.Signal)
    assert handle_signal(signal) == {"seq_id": 7, "symbol": "AAPL", "side": "buy", "quantity": 10}


# --- 2. end to end: the real client against the emulator ---------------------------------
def test_handler_with_emulator() -> None:
    orders: queue.Queue[dict[str, object]] = queue.Queue()

    def on_signal(signal: c2sync.Signal) -> None:
        orders.put(handle_signal(signal))  # runs on the client's dispatcher thread

    # Short heartbeats make liveness problems show up in a second, not in a minute.
    with Emulator(
        api_keys={"test-key"}, strategies={STRATEGY}, heartbeat_interval=0.2
    ) as emu, c2sync.connect("test-key", url=emu.url, heartbeat_timeout=2.0) as client:
        client.on(c2sync.SIGNAL, on_signal)
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        mine = {"C2Symbol": {"FullSymbol": "MSFT"}, "Side": "2", "Quantity": 3}
        emu.publish_signal(STRATEGY, mine)  # a payload of your choosing
        emu.publish_signal(STRATEGY)  # a generated, plausible one
        first = [orders.get(timeout=10), orders.get(timeout=10)]
        emu.drop()  # the network fails...
        emu.publish_signal(STRATEGY)  # ...and signals go on meanwhile
        emu.publish_signal(STRATEGY)
        # The client reconnects and resumes after the last seq_id it handed out.
        later = [orders.get(timeout=10), orders.get(timeout=10)]
    assert first[0] == {"seq_id": 1, "symbol": "MSFT", "side": "sell", "quantity": 3}
    assert [order["seq_id"] for order in first + later] == [1, 2, 3, 4]  # none lost or twice
    assert orders.empty()


if __name__ == "__main__":
    test_handler_unit()
    print("unit test: OK")
    test_handler_with_emulator()
    print("end-to-end test against the emulator: OK")
