"""Test harness: real beads folders, real Dolt servers and real towns in temp folders.

Used by `tests/conftest.py` (fixtures `beads_dir`, `dolt_server`, `town`) and by the demo.

A town is made with the real `gt install` + `gt rig add` when the real gt is installed
(mode "gt"), else from gt's file formats plus real `bd init` beads folders and a real
`dolt sql-server` (mode "files"). Every tool runs with an isolated HOME (own git and dolt
identity) and the town's own Dolt port, so parallel test runs never share a server, and
`TestTown.close()` stops every process that the town started.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.gastown.bd import init_beads
from gt_ext.gastown.binaries import find_bd, find_dolt, find_gt
from gt_ext.gastown.dolt import DoltClient, DoltServer, free_port
from gt_ext.gastown.town import Rig, Town

log = logging.getLogger(__name__)


def wait_until(pred, timeout: float, poll_s: float = 0.3) -> bool:
    """Poll `pred()` until it is true (True) or `timeout` seconds pass (False): for tests that watch a
    process they do not own (a tmux pane, a server) reach a state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll_s)
    return False


def isolated_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ with HOME moved to `home` (git and dolt identities set there) and no beads/town
    variables leaking in from the caller's own Gas Town."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for k in ("BEADS_DIR", "BEADS_DB", "BD_DB", "GT_ROOT", "GT_TOWN_ROOT", "GT_RIG", "GT_ROLE",
              "GT_DOLT_PORT", "GT_DOLT_HOST", "BD_NO_HOOKS", "DOLT_ROOT_PATH", "GIT_DIR", "GIT_WORK_TREE"):
        env.pop(k, None)
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env.update(extra or {})
    gitcfg = home / ".gitconfig"
    if not gitcfg.exists():
        gitcfg.write_text("[user]\n\tname = gt-ext test\n\temail = gt-ext-test@localhost\n"
                          "[init]\n\tdefaultBranch = main\n")
    dolt = find_dolt(required=False)
    if dolt and not (home / ".dolt" / "config_global.json").exists():
        for key, value in (("user.name", "gt-ext test"), ("user.email", "gt-ext-test@localhost")):
            subprocess.run([dolt, "config", "--global", "--add", key, value], env=env,
                           capture_output=True, check=True, stdin=subprocess.DEVNULL)
    return env


def make_git_repo(path: Path, env: dict[str, str]) -> Path:
    """A small local git repository with one commit (a rig's upstream)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text("# demo rig\n")
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "README.md"],
                 ["git", "commit", "-q", "-m", "initial commit"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return path


@dataclass
class TestTown:
    """A town in a temp folder and everything needed to drive it and tear it down."""

    __test__ = False  # not a pytest test class

    root: Path
    env: dict[str, str]  # run gt/bd/dolt with this: isolated HOME, GT_TOWN_ROOT, GT_DOLT_PORT
    dolt_port: int
    mode: str  # "gt": made by the real `gt install`; "files": gt's formats written by us
    rig_names: list[str] = field(default_factory=list)
    _server: DoltServer | None = None

    @property
    def town(self) -> Town:
        """The gt_ext.gastown.Town view of it."""
        return Town(self.root)

    def rigs(self) -> list[Rig]:
        """Its rigs."""
        return self.town.rigs()

    def beads_dirs(self) -> dict[str, Path]:
        """{"hq": town beads, rig: rig beads}."""
        return self.town.beads_dirs()

    def dolt(self, database: str | None = None) -> DoltClient:
        """A client for the town's Dolt server."""
        return DoltClient(port=self.dolt_port, database=database)

    def beads_state(self) -> dict[str, dict[str, object]]:
        """Everything bd keeps for this town, as Dolt sees it: per database, the HEAD commit and the
        hash of every base table in the working set (issues, wisps, events, ...). Two equal states
        mean nothing was written, committed or not."""
        state: dict[str, dict[str, object]] = {}
        with self.dolt() as c:
            dbs = sorted(r["Database"] for r in c.query("SHOW DATABASES")
                         if r["Database"] not in ("information_schema", "mysql"))
        for db in dbs:
            with self.dolt(db) as c:
                tables = [list(r.values())[0] for r in c.query("SHOW FULL TABLES") if list(r.values())[1] == "BASE TABLE"]
                state[db] = {"head": c.query("SELECT HASHOF('HEAD') AS h")[0]["h"],
                             "tables": {t: c.query("SELECT DOLT_HASHOF_TABLE(%s) AS h", (t,))[0]["h"] for t in tables}}
        return state

    def gt(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real gt in the town root with the town's env."""
        gt = find_gt(required=False)
        if gt is None:
            raise GtExtError("real gt is not installed")
        res = subprocess.run([gt, *args], cwd=self.root, env=self.env, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise GtExtError(f"gt {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-400:]}")
        return res

    def activate(self, monkeypatch) -> None:  # noqa: ANN001 - pytest.MonkeyPatch
        """Point this process at the town (GT_TOWN_ROOT, GT_DOLT_PORT) for one test."""
        monkeypatch.setenv("GT_TOWN_ROOT", str(self.root))
        monkeypatch.setenv("GT_DOLT_PORT", str(self.dolt_port))

    def close(self) -> None:
        """Stop the town's Dolt server and any process still running from inside the town."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.mode == "gt":
            try:
                self.gt("dolt", "stop", check=False, timeout=60)
            except (subprocess.TimeoutExpired, GtExtError) as e:
                log.warning("gt dolt stop: %s", e)
        _reap_under(self.root)


def _reap_under(root: Path, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process of this user whose command line or cwd is inside
    `root` (a unique temp folder, so only what this town started)."""
    import psutil

    root_s = str(root)
    me = os.getpid()
    victims = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd", "uids"]):
        try:
            if p.pid == me or (p.info["uids"] and p.info["uids"].real != os.getuid()):
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if root_s in cmd or (p.info["cwd"] or "").startswith(root_s):
                victims.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in victims:
        # From the listing: a zombie (exited, not yet reaped by its parent) has no cmdline to read.
        log.info("reaping leftover process %d: %s", p.pid, " ".join(p.info["cmdline"] or [])[:120])
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, what: str) -> str:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip()[-600:]
        raise GtExtError(f"{what} exited {res.returncode}: {tail}")
    return res.stdout


def make_town(base: Path, rig: str = "demo", prefix: str = "dm", use_gt: bool | None = None,
              timeout: float = 600) -> TestTown:
    """Create a town with one rig under `base` (a fresh temp folder).

    `use_gt=None` uses the real gt when it is installed. Raises GtExtError when bd or dolt is
    missing. The caller must `close()` the result (the fixtures do).
    """
    find_bd()
    find_dolt()
    if use_gt is None:
        use_gt = find_gt(required=False) is not None
    port = free_port()
    # GT_DOLT_HOST: gt writes it into the server config, so the town server binds 127.0.0.1 only.
    env = isolated_env(base / "home", {"GT_DOLT_PORT": str(port), "GT_DOLT_HOST": "127.0.0.1"})
    root = base / "town"
    upstream = make_git_repo(base / "upstream" / rig, env)
    env["GT_TOWN_ROOT"] = str(root)
    tt = TestTown(root=root, env=env, dolt_port=port, mode="gt" if use_gt else "files")
    try:
        if use_gt:
            _make_with_gt(tt, rig, prefix, upstream, timeout)
        else:
            _make_from_files(tt, rig, prefix, upstream, timeout)
    except BaseException:
        tt.close()
        raise
    tt.rig_names.append(rig)
    return tt


def _make_with_gt(tt: TestTown, rig: str, prefix: str, upstream: Path, timeout: float) -> None:
    gt = find_gt()
    assert gt is not None
    env = dict(tt.env)
    env.pop("GT_TOWN_ROOT", None)  # install refuses to run "inside" a town that does not exist yet
    t0 = time.monotonic()
    install = [gt, "install", str(tt.root), "--name", "testtown", "--dolt-port", str(tt.dolt_port)]
    out = _run(install, tt.root.parent, env, timeout, "gt install")
    if not (tt.root / ".beads" / "metadata.json").is_file():
        # gt install gives the new Dolt server 10 s to answer and only warns when it does not (a
        # loaded machine). The server is up by now or starts here; `--force` redoes the beads part.
        log.warning("gt install left no town beads, retrying: %s", _warnings(out))
        _run([gt, "dolt", "start"], tt.root, tt.env, timeout, "gt dolt start")
        out = _run([*install, "--force"], tt.root.parent, env, timeout, "gt install --force")
    if not (tt.root / ".beads" / "metadata.json").is_file():
        raise GtExtError(f"gt install made no town beads in {tt.root}: {_warnings(out)}")
    log.info("gt install took %.1f s", time.monotonic() - t0)
    _run([gt, "rig", "add", rig, upstream.as_uri(), "--prefix", prefix], tt.root, tt.env, timeout, "gt rig add")
    _check_issue_prefixes(tt, rig)


def _check_issue_prefixes(tt: TestTown, rig: str) -> None:
    """Fail loudly when gt left a beads database without `issue_prefix` (bd create/batch then fail).

    gt v1.0.1 sets prefixes with `bd config set issue_prefix`, which bd releases after v1.0.2
    refuse; install.sh pins bd v1.0.2 for that reason. A newer bd on PATH shows up here."""
    for beads in (tt.root / ".beads", Town(tt.root).rig(rig).beads_dir):
        meta = json.loads((beads / "metadata.json").read_text()) if beads else {}
        db = meta.get("dolt_database")
        if not db or meta.get("dolt_mode") != "server":
            continue
        with DoltClient(port=tt.dolt_port, database=db) as c:
            if not c.query("SELECT value FROM config WHERE `key` = 'issue_prefix'"):
                raise GtExtError(f"{beads}: gt left beads database {db!r} without issue_prefix; "
                                 f"this bd is not compatible with gt v1.0.1 (install.sh pins bd v1.0.2)")


def _warnings(out: str) -> str:
    return " | ".join(ln.strip() for ln in out.splitlines() if "⚠" in ln)[:600] or "(no warnings)"


def _make_from_files(tt: TestTown, rig: str, prefix: str, upstream: Path, timeout: float) -> None:
    """gt's on-disk formats (v1.0.1) written directly, with real bd beads and a real Dolt server."""
    root = tt.root
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    atomic_write_json(root / "mayor" / "town.json",
                      {"type": "town", "version": 2, "name": "testtown", "owner": "gt-ext-test@localhost",
                       "public_name": "testtown", "created_at": now})
    atomic_write_json(root / "mayor" / "rigs.json", {"version": 1, "rigs": {rig: {
        "git_url": upstream.as_uri(), "added_at": now, "beads": {"repo": "", "prefix": prefix}}}})
    atomic_write_json(root / "mayor" / "daemon.json", {"env": {"GT_DOLT_PORT": str(tt.dolt_port)}})
    atomic_write_json(root / "settings" / "config.json", {"type": "town-settings", "version": 1})
    atomic_write_json(root / rig / "config.json", {"type": "rig", "version": 1, "name": rig,
                                                   "git_url": upstream.as_uri(),
                                                   "beads": {"prefix": prefix}})
    atomic_write_json(root / rig / "settings" / "config.json", {"type": "rig-settings", "version": 1})
    for d in ("deacon/dogs/boot", "plugins", f"{rig}/polecats", f"{rig}/crew", f"{rig}/witness",
              f"{rig}/refinery"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / ".events.jsonl").touch()
    rig_clone = root / rig / "mayor" / "rig"
    rig_clone.parent.mkdir(parents=True, exist_ok=True)
    _run(["git", "clone", "-q", str(upstream), str(rig_clone)], root, tt.env, timeout, "git clone")
    init_beads(root, "hq", env=tt.env, timeout=timeout)
    init_beads(rig_clone, prefix, env=tt.env, timeout=timeout)
    server = DoltServer(root / ".dolt-data", port=tt.dolt_port, env=tt.env,
                        log_file=root / "daemon" / "dolt.log")
    server.start(timeout=timeout)
    tt._server = server
    with server.client() as c:
        c.query("CREATE DATABASE IF NOT EXISTS hq")
        c.query(f"CREATE DATABASE IF NOT EXISTS `{rig}`")


def remove_tree(path: Path) -> None:
    """rm -rf that tolerates read-only files (Go's module cache, git objects)."""
    def onerror(func, p, exc):  # noqa: ANN001
        os.chmod(p, 0o700)
        func(p)

    shutil.rmtree(path, onexc=onerror) if path.exists() else None


__all__ = ["TestTown", "isolated_env", "make_git_repo", "make_town", "remove_tree"]
