"""Echo client for the Autobahn|Testsuite fuzzing server (RFC 6455 compliance, issue 17).

Usage: ``python compliance/autobahn_client.py URL AGENT [--loop c2sync|websocket-client]
[--deviations PATH]``, with URL the fuzzing server (``ws://127.0.0.1:9001``). It asks the
server how many cases it has, runs each one (``/runCase?case=N&agent=AGENT``), echoing text
as text and binary as binary, then asks for the reports (``/updateReports``).

``--loop c2sync`` (the default) runs over the link the client itself uses
(:class:`c2sync._link.Link`: its own handshake, :class:`c2sync._framing.FrameReader` for
every read, its sends for the echoes). The link fails the connection as RFC 6455 says
(1002 for a violation, 1009 for a message too big, the server's code echoed on a close).
A text message that is not valid UTF-8 comes back as :class:`InvalidText`; the echo client
answers it with close 1007 as RFC 6455 8.1 says. The library itself skips such a message
instead (docs/api-contract.md "Receiving", a documented deviation), so the cases where
that happened are written to ``--deviations`` for the summary.

``--loop websocket-client`` runs websocket-client's own reading loop instead, for
comparison (its ``recv_data``, with its own UTF-8 check).

Every socket operation of a case is bounded by CASE_TIMEOUT; nothing here sleeps.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

import websocket

from c2sync._framing import InvalidText
from c2sync._link import Link
from c2sync._options import Options
from c2sync.exceptions import ConnectionClosed

CASE_TIMEOUT = 30.0  # seconds any one read or send of a case may take
CLOSE_GRACE = 5.0  # seconds to wait for the server to end TCP after our close frame
CLOSE_INVALID_DATA = 1007


def _query(url: str) -> Any:
    """The JSON message of one of the server's service URLs (getCaseCount, getCaseInfo)."""
    ws = websocket.create_connection(url, timeout=CASE_TIMEOUT)
    try:
        return json.loads(ws.recv())
    finally:
        ws.close(timeout=CLOSE_GRACE)


def echo_c2sync(url: str) -> bool:
    """One case over c2sync's link. Returns whether the RFC's 1007 was applied to a text
    message that is not UTF-8 (where the library itself would skip the message)."""
    link = Link(Options.create("autobahn", url=url, connect_timeout=CASE_TIMEOUT))
    try:
        link.handshake(time.monotonic() + CASE_TIMEOUT)  # every read of the case within it
        while link.close_frame is None:
            for message in link.read():
                if type(message) is InvalidText:
                    link.send_close(CLOSE_INVALID_DATA, "a text message that is not UTF-8")
                    return True
                if isinstance(message, str):
                    link.send(message)
                else:
                    link.send_binary(message)
    except (ConnectionClosed, OSError):
        pass  # the link answered the violation with its close code, or the server left
    finally:
        link.drain(CLOSE_GRACE)
    return False


def echo_websocket_client(url: str) -> bool:
    """One case over websocket-client's own loop (as its compliance script does it)."""
    ws = websocket.create_connection(url, timeout=CASE_TIMEOUT)
    status = websocket.STATUS_NORMAL
    try:
        while True:
            opcode, data = ws.recv_data()
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                ws.send(data, opcode)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                break  # recv_data has answered it already
    except websocket.WebSocketProtocolException:
        status = websocket.STATUS_PROTOCOL_ERROR
    except websocket.WebSocketPayloadException:
        status = websocket.STATUS_INVALID_PAYLOAD
    except (OSError, websocket.WebSocketException):
        pass
    finally:
        try:
            ws.close(status, timeout=CLOSE_GRACE)
        except (OSError, websocket.WebSocketException):
            ws.shutdown()
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the fuzzing server, e.g. ws://127.0.0.1:9001")
    parser.add_argument("agent", help="the name the server files the results under")
    parser.add_argument("--loop", choices=("c2sync", "websocket-client"), default="c2sync")
    parser.add_argument("--deviations", help="write the ids of the 1007 cases here (JSON)")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    echo = echo_c2sync if args.loop == "c2sync" else echo_websocket_client
    count = int(_query(f"{url}/getCaseCount"))
    deviations: list[str] = []
    for case in range(1, count + 1):
        try:
            if echo(f"{url}/runCase?case={case}&agent={args.agent}"):
                deviations.append(_query(f"{url}/getCaseInfo?case={case}")["id"])
        except (OSError, websocket.WebSocketException) as exc:
            print(f"case {case}: {type(exc).__name__}: {exc}", file=sys.stderr)
    ws = websocket.create_connection(f"{url}/updateReports?agent={args.agent}", timeout=60)
    try:
        ws.recv()  # the server closes once the reports are written
    except (OSError, websocket.WebSocketException):
        pass
    finally:
        ws.close(timeout=CLOSE_GRACE)
    if args.deviations:
        with open(args.deviations, "w", encoding="utf-8") as file:
            json.dump({"agent": args.agent, "invalid_text": deviations}, file)
    print(f"{args.agent}: {count} cases run ({args.loop} loop)")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(CASE_TIMEOUT)  # websocket-client's service connections too
    sys.exit(main())
