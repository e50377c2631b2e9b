"""The first process inside an agent tool sandbox (standard library only; run as `python -I -S`).

    sandbox_init.py [--rlimit NAME=N ...] [--forward PORT=SOCKET ...] -- ARGV...

It runs inside bubblewrap's new network namespace, where nothing outside is reachable. For each
`--forward`, it listens on 127.0.0.1:PORT there and relays every connection to the Unix socket
SOCKET, which the agent (outside) relays on to 127.0.0.1:PORT of the host: that is how `bd` and
`gt` reach the town's Dolt server and nothing else. Then it sets the resource limits (NAME is
`nproc`, `as`, `fsize`, `cpu` or `core`; RLIMIT_NPROC is counted per user namespace, so it counts
only the sandbox's processes), runs ARGV, and exits with its status. When it exits, the sandbox's PID namespace ends and the kernel kills whatever ARGV left
running.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time

DRAIN_S = 2.0  # after ARGV exits: time left for relays to hand on what its connections sent
_STOP = threading.Event()
_THREADS: list[threading.Thread] = []  # accept loops and pumps, joined (bounded) before exiting


def _start(target, *args) -> None:  # noqa: ANN001 - a thread's target and arguments
    t = threading.Thread(target=target, args=args, daemon=True)
    _THREADS.append(t)
    t.start()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    socks = [a, b]
    try:
        while True:
            ready, _, _ = select.select(socks, [], [])
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


def _serve(port: int, path: str) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(64)

    def loop() -> None:
        # Poll so that, once ARGV has exited (_STOP), connections still in the backlog are taken
        # and relayed before the loop ends: a client that sent and exited may not be accepted yet.
        while True:
            ready, _, _ = select.select([lsock], [], [], 0.05)
            if not ready:
                if _STOP.is_set():
                    return
                continue
            conn, _ = lsock.accept()
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(path)
            except OSError:
                conn.close()
                up.close()
                continue
            _start(_pump, conn, up)

    _start(loop)


def _drain(deadline: float) -> None:
    """Let the accept loops take what is pending and the pumps hand on what they hold (a client
    that wrote and exited leaves bytes in flight), until they end or `deadline` passes; the
    kernel then kills whatever is left with the sandbox."""
    _STOP.set()
    while time.monotonic() < deadline:
        alive = [t for t in list(_THREADS) if t.is_alive()]
        if not alive:
            return
        alive[0].join(max(0.0, deadline - time.monotonic()))


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("sandbox_init: usage: [--rlimit NAME=N] [--forward PORT=SOCKET] -- ARGV", file=sys.stderr)
        return 2
    sep = argv.index("--")
    opts, cmd = argv[:sep], argv[sep + 1:]
    limits = []
    i = 0
    while i < len(opts):
        if opts[i] == "--rlimit":
            name, _, val = opts[i + 1].partition("=")
            limits.append((getattr(resource, f"RLIMIT_{name.upper()}"), int(val)))
        elif opts[i] == "--forward":
            port, _, path = opts[i + 1].partition("=")
            _serve(int(port), path)
        else:
            print(f"sandbox_init: unknown option {opts[i]}", file=sys.stderr)
            return 2
        i += 2
    for res, val in limits:
        resource.setrlimit(res, (val, val))
    try:
        proc = subprocess.Popen(cmd, close_fds=True)
    except OSError as e:
        print(f"sandbox: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt:
            continue
    _drain(time.monotonic() + DRAIN_S)
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main(sys.argv[1:]))
