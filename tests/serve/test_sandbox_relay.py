"""The sandbox's loopback relay loses nothing a client sent before it exited (no bubblewrap needed:
both halves are plain sockets and threads)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from gt_ext.serve.sandbox import INIT_SCRIPT, _Relay


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_bytes(listener: socket.socket, n: int = 4) -> bytes:
    """Accept one connection on `listener` and read `n` bytes from it (5 s each at most)."""
    listener.settimeout(5)
    conn, _ = listener.accept()
    conn.settimeout(5)
    try:
        return conn.recv(n)
    finally:
        conn.close()


def test_init_hands_on_what_a_client_sent_before_the_command_exited(tmp_path):
    """The command connects, writes and exits at once; the far side (our Unix socket) accepts only
    after the sandbox's first process has exited, so the bytes must have been relayed before it did.
    The exit-before-relay race this guards is a matter of scheduling and did not show here without
    the fix: this test holds the behaviour (what was sent arrives), the host-side test below is the
    one that fails without its fix."""
    path = str(tmp_path / "up.sock")
    far = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    far.bind(path)
    far.listen(8)
    port = _free_port()
    client = ("import socket,time\nfor _ in range(100):\n    try:\n"
              f"        s = socket.create_connection(('127.0.0.1', {port})); break\n"
              "    except OSError: time.sleep(0.05)\ns.sendall(b'ping')\n")
    for _ in range(3):  # the race it guards against is a matter of scheduling: try it a few times
        rc = subprocess.run([sys.executable, "-I", "-S", str(INIT_SCRIPT), "--forward", f"{port}={path}", "--",
                             sys.executable, "-I", "-c", client], timeout=60).returncode
        assert rc == 0
        assert _first_bytes(far) == b"ping"
    far.close()


def test_host_relay_close_relays_connections_still_in_its_backlog():
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(8)
    port = target.getsockname()[1]
    relay = _Relay([port])
    try:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(os.path.join(relay.dir, f"{port}.sock"))
        c.sendall(b"ping")
        c.close()
    finally:
        relay.close()  # at once: the connection may still be waiting to be accepted
    assert _first_bytes(target) == b"ping"
    target.close()
    assert not os.path.exists(relay.dir)
