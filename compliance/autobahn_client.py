"""Echo client for the Autobahn|Testsuite fuzzing server (RFC 6455 compliance, issue 17).

Usage: ``python compliance/autobahn_client.py URL AGENT [--loop c2sync|websocket-client]
[--deviations PATH]``, with URL the fuzzing server (``ws://127.0.0.1:9001``). It asks the
server how many cases it has, runs each one (``/runCase?case=N&agent=AGENT``), echoing text
as text and binary as binary, then asks for the reports (``/updateReports``).

``--loop c2sync`` (the default) reads with c2sync's own frame reader, as the client does:
websocket-client's handshake, then :class:`c2sync._framing.FrameReader` for every read, and
websocket-client's ``send``/``send_binary`` for the echoes. A :class:`FrameError` is
answered with the close code it carries (1002, 1007 or 1009). A text message that is not
valid UTF-8 (:class:`InvalidText`) is answered with close 1007 as RFC 6455 8.1 says: the
library itself skips such a message instead (docs/api-contract.md "Receiving", a documented
deviation),
so the cases where that happened are written to ``--deviations`` for the summary.

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

from c2sync._framing import FrameError, FrameReader, InvalidText

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


def _finish(ws: Any, code: int | None, reason: str = "") -> None:
    """Send our close frame (none when ``code`` is None: already sent), then wait, bounded,
    for the server to end the TCP connection, as RFC 6455 7.1.1 wants of a client."""
    sock = ws.sock
    if sock is None:
        return
    try:
        if code is not None:
            ws.send_close(code, reason.encode("utf-8")[:123])
        deadline = time.monotonic() + CLOSE_GRACE
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except (OSError, websocket.WebSocketException):
        pass
    finally:
        ws.shutdown()


def echo_c2sync(url: str) -> bool:
    """One case over c2sync's reader. Returns whether the RFC's 1007 was applied to a text
    message that is not UTF-8 (where the library itself would skip the message)."""
    ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
    ws.connect(url, timeout=CASE_TIMEOUT, suppress_origin=True)
    ws.settimeout(CASE_TIMEOUT)
    reader = FrameReader.from_websocket(ws)
    try:
        while True:
            try:
                messages = reader.read()
            except FrameError as exc:
                _finish(ws, exc.close_code, exc.reason)
                return False
            for message in messages:
                if type(message) is InvalidText:
                    _finish(ws, CLOSE_INVALID_DATA, "a text message that is not UTF-8")
                    return True
                if isinstance(message, str):
                    ws.send(message)
                else:
                    ws.send_binary(message)
            close = reader.close_frame
            if close is not None:
                # Echo the code (RFC 6455 5.5.1); an empty close is answered with an empty one.
                if close.code is None:
                    ws.send(b"", websocket.ABNF.OPCODE_CLOSE)
                    _finish(ws, None)
                else:
                    _finish(ws, close.code)
                return False
    except (OSError, websocket.WebSocketException):
        ws.shutdown()  # the server went away, or a send failed: the case is over
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
