#!/usr/bin/env python3
"""Checks that a RabbitMQ node answers a real AMQP 0-9-1 handshake.

    scripts/amqp_probe.py HOST PORT [--timeout SECONDS] [--user U] [--password P] [--vhost V]

Protocol header, Connection.Start, StartOk (PLAIN), Tune, TuneOk, Open, OpenOk, then a clean
Connection.Close. An open port proves little: a wedged RabbitMQ 3.10 once accepted TCP
connections and never answered the header. Standard library only.

Exit status: 0 the handshake completed; 1 the port is open but the handshake did not complete
(timeout, garbage, a dropped connection; also a connection that is never accepted, as a full
listen backlog does): a wedged broker; 2 nothing listens (connection refused, unknown host);
3 the broker answers but refuses the credentials or the vhost (a restart would not help).
"""

import argparse
import socket
import struct
import sys
import time

FRAME_METHOD = 1
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
CONNECTION = 10
START, START_OK, TUNE, TUNE_OK, OPEN, OPEN_OK, CLOSE, CLOSE_OK = 10, 11, 30, 31, 40, 41, 50, 51


class HandshakeError(Exception):
    pass


class Refused(HandshakeError):
    """The broker answered and refused us (credentials, vhost): restarting it will not help."""


def shortstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!B", len(b)) + b


def longstr(b: bytes) -> bytes:
    return struct.pack("!I", len(b)) + b


def value(v) -> bytes:
    if isinstance(v, bool):
        return b"t" + bytes([v])
    if isinstance(v, dict):
        return b"F" + table(v)
    return b"S" + longstr(v.encode())


def table(fields: dict) -> bytes:
    return longstr(b"".join(shortstr(k) + value(v) for k, v in fields.items()))


def method_frame(method: int, args: bytes) -> bytes:
    payload = struct.pack("!HH", CONNECTION, method) + args
    return struct.pack("!BHI", FRAME_METHOD, 0, len(payload)) + payload + bytes([FRAME_END])


class Reader:
    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.buf = b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise HandshakeError("timed out waiting for the broker")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise HandshakeError("timed out waiting for the broker") from None
            if not chunk:
                raise HandshakeError("the broker closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def method(self) -> tuple:
        """The next connection method as (method id, arguments), heartbeats skipped."""
        while True:
            header = self.read(7)
            if header[:4] == b"AMQP":
                # The broker answers a header it does not speak with its own.
                raise HandshakeError(f"protocol mismatch, the broker speaks {header!r}")
            kind, channel, size = struct.unpack("!BHI", header)
            payload = self.read(size)
            if self.read(1)[0] != FRAME_END:
                raise HandshakeError("malformed frame (no frame end)")
            if kind == FRAME_HEARTBEAT:
                continue
            if kind != FRAME_METHOD or channel != 0:
                raise HandshakeError(f"unexpected frame type {kind} on channel {channel}")
            class_id, method_id = struct.unpack("!HH", payload[:4])
            if class_id != CONNECTION:
                raise HandshakeError(f"unexpected method {class_id}.{method_id}")
            if method_id == CLOSE:
                code = struct.unpack("!H", payload[4:6])[0]
                text = payload[7 : 7 + payload[6]].decode(errors="replace")
                error = Refused if code in (402, 403, 530) else HandshakeError
                raise error(f"the broker closed the connection: {code} {text}")
            return method_id, payload[4:]


def expect(reader: Reader, want: int, name: str) -> bytes:
    got, args = reader.method()
    if got != want:
        raise HandshakeError(f"expected Connection.{name}, got method 10.{got}")
    return args


def handshake(host: str, port: int, timeout: float, user: str, password: str, vhost: str) -> str:
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        reader = Reader(sock, deadline)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        start = expect(reader, START, "Start")
        major, minor = start[0], start[1]
        if (major, minor) != (0, 9):
            raise HandshakeError(f"the broker offers AMQP {major}-{minor}, not 0-9")
        # Without this capability RabbitMQ answers bad credentials by dropping the connection,
        # which would look like a wedged broker.
        props = table(
            {
                "product": "erasure amqp_probe.py",
                "capabilities": {"authentication_failure_close": True},
            }
        )
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        sock.sendall(
            method_frame(START_OK, props + shortstr("PLAIN") + longstr(response) + shortstr("en_US"))
        )
        channel_max, frame_max, _heartbeat = struct.unpack("!HIH", expect(reader, TUNE, "Tune")[:8])
        # Heartbeat 0: this connection lives for a second.
        sock.sendall(method_frame(TUNE_OK, struct.pack("!HIH", channel_max, frame_max, 0)))
        sock.sendall(method_frame(OPEN, shortstr(vhost) + shortstr("") + b"\x00"))
        expect(reader, OPEN_OK, "OpenOk")
        sock.sendall(method_frame(CLOSE, struct.pack("!H", 200) + shortstr("probe done") + struct.pack("!HH", 0, 0)))
        try:
            expect(reader, CLOSE_OK, "CloseOk")
        except HandshakeError:
            pass  # The handshake is what we test; a lost CloseOk is harmless.
        return f"AMQP 0-9-1 handshake with {host}:{port} completed (vhost {vhost!r})"
    finally:
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for the whole handshake")
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    a = parser.parse_args()
    try:
        said = handshake(a.host, a.port, a.timeout, a.user, a.password, a.vhost)
    except (ConnectionRefusedError, socket.gaierror) as e:
        print(f"amqp_probe: nothing listens on {a.host}:{a.port} ({e})", file=sys.stderr)
        return 2
    except Refused as e:
        print(f"amqp_probe: {a.host}:{a.port} answers but refuses us: {e}", file=sys.stderr)
        return 3
    except (HandshakeError, OSError) as e:
        print(f"amqp_probe: {a.host}:{a.port} is open but the handshake failed: {e}", file=sys.stderr)
        return 1
    if not a.quiet:
        print(said)
    return 0


if __name__ == "__main__":
    sys.exit(main())
