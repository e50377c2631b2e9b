"""Dolt: talk to a town's `dolt sql-server` over the MySQL protocol, or start one for tests.

A Gas Town runs one `dolt sql-server` per town (user root, no password, data in
`<town>/.dolt-data/`, port 3307 unless `.dolt-data/config.yaml` or `mayor/daemon.json` says
otherwise); every rig is a database on it and `hq` holds the town beads.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.gastown.binaries import find_dolt
from gt_ext.procgroup import stop_groups

log = logging.getLogger(__name__)

DEFAULT_PORT = 3307
LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port (we can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def town_dolt_port(town_root: str | os.PathLike) -> int:
    """The port of a town's Dolt server, read the way gt reads it (config.yaml > env > daemon.json > 3307)."""
    root = Path(town_root)
    cfg = root / ".dolt-data" / "config.yaml"
    if cfg.is_file():
        import yaml

        try:
            data = yaml.safe_load(cfg.read_text()) or {}
            port = int(((data.get("listener") or {}).get("port")) or 0)
            if port:
                return port
        except (yaml.YAMLError, ValueError, TypeError, AttributeError):
            log.warning("%s: unreadable, ignoring", cfg)
    if os.environ.get("GT_DOLT_PORT", "").isdigit():
        return int(os.environ["GT_DOLT_PORT"])
    daemon = root / "mayor" / "daemon.json"
    if daemon.is_file():
        try:
            port = str((json.loads(daemon.read_text()).get("env") or {}).get("GT_DOLT_PORT", ""))
            if port.isdigit():
                return int(port)
        except (json.JSONDecodeError, AttributeError):
            log.warning("%s: unreadable, ignoring", daemon)
    return DEFAULT_PORT


def dolt_ports(town_root: str | os.PathLike | None, beads_dir: str | os.PathLike | None = None) -> list[int]:
    """Every loopback port `bd`/`gt` may use to reach a town's Dolt server: the town's port, bd's
    port variables, and the beads folder's `dolt-server.port` file (bd reads them in that order)."""
    ports: list[int] = []
    for var in ("BEADS_DOLT_SERVER_PORT", "BEADS_DOLT_PORT", "GT_DOLT_PORT"):
        if os.environ.get(var, "").isdigit():
            ports.append(int(os.environ[var]))
    if beads_dir is not None:
        pf = Path(beads_dir) / "dolt-server.port"
        try:
            text = pf.read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            ports.append(int(text))
    if town_root is not None:
        ports.append(town_dolt_port(town_root))
    return sorted({p for p in ports if 0 < p < 65536})


class DoltClient:
    """A MySQL-protocol connection to a Dolt SQL server (pymysql underneath)."""

    def __init__(self, host: str = LOCALHOST, port: int = DEFAULT_PORT, user: str = "root",
                 password: str = "", database: str | None = None, connect_timeout: float = 5.0):
        self.host, self.port, self.user, self.database = host, port, user, database
        self._password = password
        self._timeout = connect_timeout
        self._conn: Any = None

    @classmethod
    def for_town(cls, town_root: str | os.PathLike, database: str | None = None) -> DoltClient:
        """A client for the Dolt server of the town at `town_root` (user root, no password)."""
        return cls(port=town_dolt_port(town_root), database=database,
                   user=os.environ.get("GT_DOLT_USER", "root"),
                   password=os.environ.get("GT_DOLT_PASSWORD", ""))

    def connect(self) -> DoltClient:
        """Open the connection (autocommit on); raises GtExtError naming host:port when refused."""
        import pymysql

        try:
            self._conn = pymysql.connect(host=self.host, port=self.port, user=self.user,
                                         password=self._password, database=self.database,
                                         connect_timeout=self._timeout, autocommit=True,
                                         cursorclass=pymysql.cursors.DictCursor)
        except pymysql.err.OperationalError as e:
            raise GtExtError(f"dolt sql-server at {self.host}:{self.port}: cannot connect ({e.args[-1]})") from None
        return self

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        """Run one statement and return its rows as dicts (empty list for statements without rows)."""
        if self._conn is None:
            self.connect()
        with self._conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall() or [])

    def databases(self) -> list[str]:
        """User databases on the server (system schemas left out)."""
        system = {"information_schema", "mysql", "performance_schema", "sys"}
        return [r["Database"] for r in self.query("SHOW DATABASES") if r["Database"] not in system]

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> DoltClient:
        return self.connect() if self._conn is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ensure_identity(env: dict[str, str] | None = None, dolt: str | None = None) -> None:
    """Give dolt a commit identity if it has none (dolt refuses to create databases without one).

    Honours `DOLT_ROOT_PATH` in `env`, so tests can keep their identity out of the user's ~/.dolt.
    """
    dolt = dolt or find_dolt()
    for key, value in (("user.name", "gt-ext"), ("user.email", "gt-ext@localhost")):
        got = subprocess.run([dolt, "config", "--global", "--get", key], env=env,
                             capture_output=True, text=True)
        if got.returncode != 0 or not got.stdout.strip():
            subprocess.run([dolt, "config", "--global", "--add", key, value], env=env,
                           capture_output=True, text=True, check=True)


class DoltServer:
    """A `dolt sql-server` child process bound to 127.0.0.1 on a free port, stopped by `stop()`.

    Use as a context manager. Listens on 127.0.0.1 only unless `host` says otherwise.
    """

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None, host: str = LOCALHOST,
                 env: dict[str, str] | None = None, log_file: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.env = dict(os.environ if env is None else env)
        self.log_file = Path(log_file) if log_file else self.data_dir.parent / f"dolt-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 60.0) -> DoltServer:
        """Start the server and wait until it accepts MySQL connections (GtExtError on failure)."""
        dolt = find_dolt()
        if not port_free(self.host, self.port):
            # Checked first: otherwise the readiness probe below would talk to the other server.
            raise GtExtError(f"dolt sql-server: port {self.host}:{self.port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_identity(self.env, dolt)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_file, "ab")
        # Own session: stop() can signal the server and anything it spawned, and ^C in a test
        # runner does not reach it twice.
        self.proc = subprocess.Popen(
            [dolt, "sql-server", "--host", self.host, "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            cwd=self.data_dir, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-400:].strip().replace("\n", " | ")
                self.proc = None
                raise GtExtError(f"dolt sql-server on {self.host}:{self.port} exited at start: {tail}")
            try:
                with DoltClient(self.host, self.port, connect_timeout=1.0) as c:
                    c.query("SELECT 1")
                log.info("dolt sql-server up on %s:%d (pid %d)", self.host, self.port, self.proc.pid)
                return self
            except GtExtError:
                time.sleep(0.2)
        self.stop()
        raise GtExtError(f"dolt sql-server on {self.host}:{self.port} did not answer within {timeout:.0f} s")

    def client(self, database: str | None = None) -> DoltClient:
        """A (not yet connected) client for this server."""
        return DoltClient(self.host, self.port, database=database)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL after `timeout`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_groups([proc], grace_s=timeout)

    def __enter__(self) -> DoltServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
