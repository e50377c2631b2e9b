"""Shared fixtures for every test package: the real Gas Town tools in temp folders.

- `bd_bin`, `gt_bin`, `dolt_bin`: paths of the real binaries; the test is skipped (with the
  reason) when one is missing. `gt_bin` is the REAL gt, never our shim.
- `beads_dir`: a real `bd init --prefix t` beads folder in tmp_path (embedded Dolt), with
  BD_NO_HOOKS unset so bead hooks fire. Use `gt_ext.gastown.bd.Bd(beads_dir)` to drive it.
- `dolt_server`: a real `dolt sql-server` on a free 127.0.0.1 port (`.port`, `.client()`),
  stopped after the test.
- `town`: a real town with one rig `demo` (prefix `dm`): made by the real `gt install` +
  `gt rig add` when gt is installed (`town.mode == "gt"`), else gt's files + real bd beads + a
  real dolt server (`"files"`). Shared by the whole session (it takes a while to build): do not
  break it; use `make_town` for a private one. `town.env` runs tools against it;
  `town.activate(monkeypatch)` points this process at it (GT_TOWN_ROOT, GT_DOLT_PORT).
- `make_town`: factory for private towns, each torn down after the test.
- `prefs_town`: a second session town (real gt) whose rig's beads and code get branched and merged.
Every process these fixtures start is stopped at teardown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests run the venv's tools and the Go tools linked into it, whatever the caller's PATH.
_VENV_BIN = str(Path(sys.executable).parent)
if _VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _VENV_BIN + os.pathsep + os.environ.get("PATH", "")


def pytest_configure(config: pytest.Config) -> None:
    """Several packages have test files of the same name (test_cli.py, test_runner.py) and the test
    folders are not packages, which pytest's default import mode refuses. Import test modules by
    path instead, and keep every test folder importable so that helper modules beside the tests
    (`import train_corpus`) still work as they did."""
    if config.option.importmode == "prepend":
        config.option.importmode = "importlib"
        here = Path(__file__).resolve().parent
        for d in sorted(p for p in here.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
            if str(d) not in sys.path:
                sys.path.append(str(d))


def _need(finder_name: str, what: str) -> str:
    from gt_ext.gastown import binaries

    path = getattr(binaries, finder_name)(required=False)
    if path is None:
        pytest.skip(f"{what} is not installed (run ./install.sh)")
    return path


@pytest.fixture(scope="session")
def bd_bin() -> str:
    """The real `bd` binary (skip if missing)."""
    return _need("find_bd", "bd (beads)")


@pytest.fixture(scope="session")
def gt_bin() -> str:
    """The real `gt` binary, not our shim (skip if missing)."""
    return _need("find_gt", "real gt (gastown)")


@pytest.fixture(scope="session")
def dolt_bin() -> str:
    """The real `dolt` binary (skip if missing)."""
    return _need("find_dolt", "dolt")


@pytest.fixture
def beads_dir(bd_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real beads folder made by `bd init --prefix t` in tmp_path/proj; returns `.../.beads`."""
    from gt_ext.gastown.bd import init_beads
    from gt_ext.gastown.testing import isolated_env

    monkeypatch.delenv("BD_NO_HOOKS", raising=False)
    env = isolated_env(tmp_path / "home")
    return init_beads(tmp_path / "proj", "t", bd_bin=bd_bin, env=env)


@pytest.fixture
def dolt_server(dolt_bin: str, tmp_path: Path) -> Iterator:
    """A real `dolt sql-server` on 127.0.0.1:<free port>, data in tmp_path/dolt-data."""
    from gt_ext.gastown.dolt import DoltServer
    from gt_ext.gastown.testing import isolated_env

    env = isolated_env(tmp_path / "dolt-home")
    server = DoltServer(tmp_path / "dolt-data", env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_town(bd_bin: str, dolt_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable]:
    """Factory: `make_town(rig="demo", prefix="dm", use_gt=None)` -> TestTown, torn down after the test."""
    from gt_ext.gastown.testing import make_town as _make

    made = []

    def factory(**kw):
        tt = _make(tmp_path_factory.mktemp("town"), **kw)
        made.append(tt)
        return tt

    try:
        yield factory
    finally:
        for tt in made:
            tt.close()


@pytest.fixture(scope="session")
def prefs_town(bd_bin: str, dolt_bin: str, gt_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real town (gt install + rig `demo`, prefix `dm`, beads on the town's dolt sql-server) for the
    tests that branch and merge a rig's beads and code (gastown branches, prefs). Apart from `town`,
    whose rig main other tests read."""
    from gt_ext.gastown.testing import make_town as _make

    tt = _make(tmp_path_factory.mktemp("prefs-town"), rig="demo", prefix="dm")
    try:
        yield tt
    finally:
        tt.close()


@pytest.fixture(scope="session")
def town(bd_bin: str, dolt_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real town with rig `demo` (see module doc). Session-scoped: do not break it."""
    from gt_ext.errors import GtExtError
    from gt_ext.gastown.testing import make_town as _make

    try:
        tt = _make(tmp_path_factory.mktemp("town"))
    except GtExtError as e:
        pytest.fail(f"could not build the test town: {e}")
    try:
        yield tt
    finally:
        tt.close()
