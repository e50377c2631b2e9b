"""Run the agent's tool commands in a bubblewrap sandbox.

    policy = SandboxPolicy(workdir=Path("/town/demo/witness"), write=[beads_dir], ports=[3307])
    box = Sandbox(policy)
    box.unavailable()                   # None, or why tools cannot run here (then they must not)
    res = box.run(["bash", "-c", cmd], timeout_s=120)

What a command inside sees and may do (as current coding-agent sandboxes on Linux do it):

- the filesystem read-only (`/` bound read-only), except the work dir and the `write` paths;
- private, empty `/tmp`, `/var/tmp`, `/run` and `/dev/shm` (other processes' temp files, tmux and
  Docker sockets are not there); `read` paths are bound read-only back in (a town under /tmp);
- `deny` paths (SSH and cloud credentials, token files, the corpus) replaced by empty ones;
- only the environment in `env` (the caller builds it from an allow-list: no tokens);
- its own user, PID, IPC, UTS and network namespaces, all capabilities dropped, no_new_privs
  (sudo and setuid binaries gain nothing), no nested user namespaces, a new session (no TIOCSTI
  into the agent's terminal); it cannot see or signal any process outside;
- network: `loopback` (default) = an empty network namespace in which 127.0.0.1:PORT for each of
  `ports` (the town's Dolt server) is relayed to the host's 127.0.0.1:PORT and nothing else is
  reachable; `none` = nothing; `host` = the host's network (a role's config must ask for it);
- limits: processes (a pids cgroup where one is writable, and RLIMIT_NPROC in the sandbox's user
  namespace), address space, file size, CPU time, wall time (the whole sandbox is killed), output.

If bubblewrap is missing or cannot create namespaces here, `unavailable()` says why and `run`
refuses: the agent then runs no tools at all.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

NETWORK_MODES = ("loopback", "none", "host")
NET_DIR = "/run/gt-ext-net"  # where the relay sockets appear inside the sandbox
INIT_SCRIPT = Path(__file__).with_name("sandbox_init.py")
PIDS_CGROUP_V1 = Path("/sys/fs/cgroup/pids")
# Mount points replaced by empty private tmpfs inside the sandbox.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/run", "/dev/shm")


@dataclass
class SandboxPolicy:
    """What a sandboxed command may touch. Paths are absolute; missing ones are skipped."""

    workdir: Path
    write: list[Path] = field(default_factory=list)  # read-write besides the work dir
    read: list[Path] = field(default_factory=list)  # bound read-only back over the private dirs
    deny: list[Path] = field(default_factory=list)  # hidden (empty dir / empty file)
    env: dict[str, str] = field(default_factory=dict)  # the command's whole environment
    network: str = "loopback"
    ports: list[int] = field(default_factory=list)  # loopback TCP ports relayed to the host's
    max_procs: int = 256
    memory_mb: int = 8192  # address space per process (Go tools reserve a lot of it)
    file_mb: int = 1024  # largest file a command may write
    tmp_mb: int = 256  # size of the private /tmp

    def __post_init__(self) -> None:
        if self.network not in NETWORK_MODES:
            raise ValueError(f"sandbox network {self.network!r}: use one of {', '.join(NETWORK_MODES)}")
        self.workdir = Path(self.workdir).resolve()


@dataclass
class SandboxResult:
    """A finished sandboxed command."""

    returncode: int | None  # None when killed for the time limit
    output: str  # stdout and stderr interleaved, bounded (head and tail kept)
    timed_out: bool = False
    dropped: int = 0  # bytes of output not kept


def bwrap_path() -> str | None:
    """The bubblewrap binary, or None."""
    override = os.environ.get("GT_EXT_BWRAP")
    return shutil.which(override) if override else shutil.which("bwrap")


_PROBE: dict[str, str | None] = {}


class Sandbox:
    """Builds the bubblewrap command line for a policy and runs commands under it."""

    def __init__(self, policy: SandboxPolicy):
        self.policy = policy

    # -- availability -----------------------------------------------------------------------
    def unavailable(self) -> str | None:
        """None when commands can run sandboxed here; else a one-line reason (tools are then refused)."""
        bwrap = bwrap_path()
        if bwrap is None:
            return "bubblewrap (bwrap) is not installed; install the Debian/Ubuntu package `bubblewrap` (./install.sh does)"
        if not self.policy.workdir.is_dir():
            return f"work dir {self.policy.workdir} does not exist"
        key = f"{bwrap}:{self.policy.network}"
        if key not in _PROBE:
            _PROBE[key] = self._probe(bwrap)
        return _PROBE[key]

    def _probe(self, bwrap: str) -> str | None:
        """Start an empty sandbox once: namespaces may be forbidden (containers, AppArmor)."""
        argv = [bwrap, *self._namespace_args(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--", "/bin/true"]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bubblewrap failed to start: {e}"
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or ["no message"])[-1]
            return f"bubblewrap cannot create a sandbox here ({why})"
        return None

    # -- command line -----------------------------------------------------------------------
    def _namespace_args(self) -> list[str]:
        args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--disable-userns", "--cap-drop", "ALL", "--die-with-parent", "--new-session",
                "--hostname", "gt-sandbox"]
        if self.policy.network != "host":
            args.append("--unshare-net")
        return args

    def bwrap_args(self, net_dir: str | None = None) -> list[str]:
        """bubblewrap's options (mounts, namespaces, environment) for this policy."""
        p = self.policy
        args = self._namespace_args()
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for d in PRIVATE_DIRS:
            if os.path.isdir(d) and not os.path.islink(d):
                args += ["--size", str(p.tmp_mb * 2**20), "--tmpfs", d] if d == "/tmp" else ["--tmpfs", d]
        hidden = [Path(d) for d in PRIVATE_DIRS]
        # This package and its Python are needed inside even when installed under /tmp; with the
        # host's network, so is the resolver config (often a link into /run).
        extra = [INIT_SCRIPT.parent, Path(sys.prefix), Path(sys.base_prefix)]
        extra += [Path("/etc/resolv.conf")] if p.network == "host" else []
        for r in _existing([*p.read, *extra]):
            if any(r == h or h in r.parents for h in hidden):
                args += ["--ro-bind", str(r), str(r)]
        # Shallow binds first, so a nested write path is bound over its read-only parent.
        for w in sorted(_existing([p.workdir, *p.write]), key=lambda x: len(x.parts)):
            args += ["--bind", str(w), str(w)]
        for d in _existing(p.deny):
            if d.is_dir():
                args += ["--tmpfs", str(d), "--remount-ro", str(d)]
            else:
                args += ["--ro-bind", "/dev/null", str(d)]
        if net_dir:
            args += ["--ro-bind", net_dir, NET_DIR]
        args += ["--clearenv"]
        for k, v in sorted(p.env.items()):
            args += ["--setenv", k, v]
        args += ["--chdir", str(p.workdir)]
        return args

    # -- running ----------------------------------------------------------------------------
    def run(self, argv: list[str], timeout_s: float, keep_bytes: int = 65536) -> SandboxResult:
        """Run `argv` in the sandbox; kill the whole sandbox after `timeout_s`. Raises RuntimeError
        when the sandbox is unavailable (callers check `unavailable()` first)."""
        why = self.unavailable()
        if why:
            raise RuntimeError(f"sandbox unavailable: {why}")
        p = self.policy
        relay = _Relay(p.ports) if p.network == "loopback" and p.ports else None
        cgroup = _PidsCgroup.create(p.max_procs)
        try:
            init = [sys.executable, "-I", "-S", str(INIT_SCRIPT)]
            for name, val in _limits(p, timeout_s):
                init += ["--rlimit", f"{name}={val}"]
            if relay:
                for port in p.ports:
                    init += ["--forward", f"{port}={NET_DIR}/{port}.sock"]
            cmd = [bwrap_path() or "bwrap", *self.bwrap_args(relay.dir if relay else None), "--", *init, "--", *argv]
            # bwrap joins the pids cgroup before it forks anything (writing 0 moves the writer).
            join = (lambda: os.write(cgroup.fd, b"0")) if cgroup else None
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=join, env={"PATH": "/usr/bin:/bin"})
            out, dropped, timed_out = _read_bounded(proc, timeout_s, keep_bytes)
            return SandboxResult(None if timed_out else proc.returncode, out, timed_out, dropped)
        finally:
            if relay:
                relay.close()
            if cgroup:
                cgroup.remove()


def _existing(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        try:
            r = Path(p).resolve()
        except OSError:
            continue
        if r.exists() and r not in out:
            out.append(r)
    return out


def _limits(p: SandboxPolicy, timeout_s: float) -> list[tuple[str, int]]:
    """Resource limits the sandbox's first process sets on itself and so on the command."""
    return [("nproc", p.max_procs), ("as", p.memory_mb * 2**20), ("fsize", p.file_mb * 2**20),
            ("cpu", int(timeout_s) + 5), ("core", 0)]


def _read_bounded(proc: subprocess.Popen, timeout_s: float, keep: int) -> tuple[str, int, bool]:
    """Read the command's output until it exits or the deadline; keep `keep` bytes of head and tail."""
    assert proc.stdout is not None
    head, tail = bytearray(), bytearray()
    dropped = 0
    deadline = time.monotonic() + max(timeout_s, 0.1)
    timed_out = False
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not sel.select(timeout=min(left, 0.5)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            if len(head) < keep:
                take = keep - len(head)
                head += chunk[:take]
                chunk = chunk[take:]
            tail += chunk
            if len(tail) > keep:
                dropped += len(tail) - keep
                del tail[: len(tail) - keep]
    finally:
        sel.close()
    if timed_out:
        _kill(proc)
    else:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
    proc.stdout.close()
    text = head.decode("utf-8", "replace")
    if dropped:
        text += f"\n[... {dropped} bytes of output dropped ...]\n"
    return text + tail.decode("utf-8", "replace"), dropped, timed_out


def _kill(proc: subprocess.Popen) -> None:
    """Kill bwrap's process group; --die-with-parent takes the sandbox's PID namespace with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class _Relay:
    """Host side of the loopback relay: a Unix socket per port, each connection relayed to 127.0.0.1:PORT."""

    def __init__(self, ports: list[int]):
        self.dir = tempfile.mkdtemp(prefix="gt-ext-net-")  # 0700: only this user reaches the sockets
        self._socks: list[socket.socket] = []
        self._ports = list(ports)
        self._closed = False
        for port in ports:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(os.path.join(self.dir, f"{port}.sock"))
            s.listen(64)
            self._socks.append(s)
            threading.Thread(target=self._accept, args=(s, port), daemon=True, name=f"gt-ext-relay-{port}").start()

    def _accept(self, lsock: socket.socket, port: int) -> None:
        while not self._closed:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            self._relay(conn, port)

    @staticmethod
    def _relay(conn: socket.socket, port: int) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", port), timeout=10)
            up.settimeout(None)
        except OSError:
            conn.close()
            return
        threading.Thread(target=_pump, args=(conn, up), daemon=True).start()

    def close(self) -> None:
        """Stop accepting; connections the sandbox made that are still waiting in a backlog (a
        client that wrote and exited) are relayed first, so what they sent still arrives."""
        self._closed = True
        for s, port in zip(self._socks, self._ports, strict=True):
            s.setblocking(False)
            while True:
                try:
                    conn, _ = s.accept()
                except OSError:
                    break
                conn.setblocking(True)
                self._relay(conn, port)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pump(a: socket.socket, b: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        a.close()
        b.close()


class _PidsCgroup:
    """A pids cgroup (v1 hierarchy) for one sandboxed command, when this host lets us make one."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path / "cgroup.procs", os.O_WRONLY)

    @classmethod
    def create(cls, max_procs: int) -> _PidsCgroup | None:
        if not os.access(PIDS_CGROUP_V1, os.W_OK):
            return None
        path = PIDS_CGROUP_V1 / f"gt-ext-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(max_procs))
            return cls(path)
        except OSError as e:
            log.debug("pids cgroup unavailable: %s", e)
            try:
                path.rmdir()
            except OSError:
                pass
            return None

    def remove(self) -> None:
        os.close(self.fd)
        for _ in range(50):  # the killed processes leave the cgroup asynchronously
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)
        log.warning("could not remove %s", self.path)
