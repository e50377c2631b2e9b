"""Pin a program's Dolt connections to one branch: a MySQL-protocol forwarder on 127.0.0.1.

Why: a Dolt sql-server chooses the branch of a connection from its database name (`beads` is the
default branch, `beads/feature` is the branch `feature`), but bd accepts only plain database names
(`^[a-zA-Z_][a-zA-Z0-9_-]*$`) and the server-wide `@@beads_default_branch` would move every agent
at once. So an agent that must work in a branch talks to this forwarder instead of the town's
server; the forwarder passes every byte through unchanged, except that it renames the database a
client asks for, `DATABASE` -> `DATABASE/BRANCH`, where the protocol carries it:

- the handshake response (the client's first packet, field `database` when CLIENT_CONNECT_WITH_DB),
- `COM_INIT_DB` (what drivers send for `USE db` as a command),
- a `COM_QUERY` that is exactly `USE db` / ``USE `db` ``.

Connections that ask for another database, or none, go through untouched. A client that asks for
TLS is refused (the forwarder would have to read encrypted packets); bd talks to a local server
without TLS. Packet layout (MySQL client/server protocol): 3-byte little-endian payload length,
1-byte sequence id, payload.

    with BranchProxy(port=town_port, database="demo", branch="prefs-dm-1-a") as proxy:
        env["BEADS_DOLT_SERVER_PORT"] = str(proxy.port)   # bd now reads and writes that branch
"""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading

from gt_ext.errors import GtExtError
from gt_ext.gastown.dolt import LOCALHOST

log = logging.getLogger(__name__)

CLIENT_CONNECT_WITH_DB = 0x00000008
CLIENT_PROTOCOL_41 = 0x00000200
CLIENT_SSL = 0x00000800
CLIENT_SECURE_CONNECTION = 0x00008000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x00200000
COM_QUERY = 0x03
COM_INIT_DB = 0x02
_USE = re.compile(rb"^\s*use\s+`?([A-Za-z0-9_\-]+)`?\s*;?\s*$", re.I)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_packet(sock: socket.socket) -> tuple[int, bytes] | None:
    """One protocol packet: (sequence id, payload), or None at EOF."""
    head = _read_exact(sock, 4)
    if head is None:
        return None
    length = head[0] | head[1] << 8 | head[2] << 16
    payload = _read_exact(sock, length) if length else b""
    return (head[3], payload) if payload is not None else None


def packet(seq: int, payload: bytes) -> bytes:
    """Frame a payload (< 16 MiB) as one packet."""
    n = len(payload)
    return bytes((n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF, seq)) + payload


def _lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    """A length-encoded integer at `pos`: (value, position after it)."""
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def rewrite_handshake(payload: bytes, database: str, target: str) -> bytes:
    """HandshakeResponse41 with its database field renamed `database` -> `target` (else unchanged)."""
    (caps,) = struct.unpack_from("<I", payload, 0)
    if not caps & CLIENT_PROTOCOL_41 or not caps & CLIENT_CONNECT_WITH_DB:
        return payload
    pos = 32  # capabilities 4, max packet 4, charset 1, filler 23
    pos = payload.index(b"\0", pos) + 1  # user name
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        n, pos = _lenenc(payload, pos)
        pos += n
    elif caps & CLIENT_SECURE_CONNECTION:
        pos += 1 + payload[pos]
    else:
        pos = payload.index(b"\0", pos) + 1
    end = payload.index(b"\0", pos)
    if payload[pos:end].decode("utf-8", "replace").lower() != database.lower():
        return payload
    return payload[:pos] + target.encode() + payload[end:]


def rewrite_command(payload: bytes, database: str, target: str) -> bytes:
    """A command packet with `database` renamed (COM_INIT_DB, or COM_QUERY `USE database`)."""
    if not payload:
        return payload
    if payload[0] == COM_INIT_DB and payload[1:].decode("utf-8", "replace").lower() == database.lower():
        return bytes((COM_INIT_DB,)) + target.encode()
    if payload[0] == COM_QUERY:
        m = _USE.match(payload[1:])
        if m and m.group(1).decode().lower() == database.lower():
            return bytes((COM_QUERY,)) + f"USE `{target}`".encode()
    return payload


class BranchProxy:
    """Listen on 127.0.0.1 (a free port unless `listen_port`), forward to the Dolt server at
    `host:port`, and pin connections for `database` to `database/branch` (see module doc)."""

    def __init__(self, port: int, database: str, branch: str, host: str = LOCALHOST, listen_port: int = 0):
        if not re.match(r"^[A-Za-z0-9_\-]+$", database):
            raise GtExtError(f"branch proxy: bad database name {database!r}")
        if not branch or any(c in branch for c in "`'\"\\\0 "):
            raise GtExtError(f"branch proxy: bad branch name {branch!r}")
        self.upstream = (host, port)
        self.database = database
        self.branch = branch
        self.target = f"{database}/{branch}"
        self._listen_port = listen_port
        self._server: socket.socket | None = None
        self._port: int | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The port clients connect to (after start)."""
        if self._port is None:
            raise GtExtError("branch proxy is not running")
        return self._port

    def start(self) -> BranchProxy:
        """Bind and start accepting connections in a background thread."""
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((LOCALHOST, self._listen_port))
        srv.listen(64)
        self._server = srv
        self._port = int(srv.getsockname()[1])
        t = threading.Thread(target=self._accept_loop, name=f"branch-proxy-{self.branch}", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("branch proxy %s:%d -> %s:%d as %s", LOCALHOST, self.port, *self.upstream, self.target)
        return self

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError as e:
                log.warning("branch proxy: cannot reach dolt at %s:%d (%s)", *self.upstream, e)
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for fn, args in ((self._pump_client, (client, upstream)), (self._pump_raw, (upstream, client))):
                t = threading.Thread(target=fn, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def _pump_raw(self, src: socket.socket, dst: socket.socket) -> None:
        """Server -> client: bytes unchanged."""
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _pump_client(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client -> server, packet by packet: the handshake response and commands that name the
        database are rewritten; everything else goes through as read."""
        first = True
        try:
            while (pkt := read_packet(client)) is not None:
                seq, payload = pkt
                if first:
                    first = False
                    if len(payload) >= 4 and struct.unpack_from("<I", payload, 0)[0] & CLIENT_SSL:
                        log.warning("branch proxy: a client asked for TLS; refused (it would hide the database name)")
                        return
                    payload = rewrite_handshake(payload, self.database, self.target)
                elif seq == 0 and len(payload) < 0xFFFFFF:  # a new command (continuations have seq > 0)
                    payload = rewrite_command(payload, self.database, self.target)
                upstream.sendall(packet(seq, payload))
        except (OSError, ValueError, struct.error) as e:
            log.debug("branch proxy connection ended: %s", e)
        finally:
            self._close(client, upstream)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._conns.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self) -> None:
        """Stop accepting, close every open connection and wait for the pump threads."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            conns = list(self._conns)
        self._close(*conns)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> BranchProxy:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
