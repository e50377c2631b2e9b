"""The Dolt client and server against the real `dolt`."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from gt_ext.errors import GtExtError
from gt_ext.gastown.dolt import DoltClient, DoltServer, free_port, town_dolt_port


def test_town_dolt_port_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GT_DOLT_PORT", raising=False)
    assert town_dolt_port(tmp_path) == 3307
    (tmp_path / "mayor").mkdir()
    (tmp_path / "mayor" / "daemon.json").write_text('{"env": {"GT_DOLT_PORT": "4001"}}')
    assert town_dolt_port(tmp_path) == 4001
    monkeypatch.setenv("GT_DOLT_PORT", "4002")
    assert town_dolt_port(tmp_path) == 4002
    (tmp_path / ".dolt-data").mkdir()
    (tmp_path / ".dolt-data" / "config.yaml").write_text("listener:\n  port: 4003\n")
    assert town_dolt_port(tmp_path) == 4003


def test_refused_connection_is_one_line() -> None:
    with pytest.raises(GtExtError) as ei:
        DoltClient(port=free_port(), connect_timeout=1).connect()
    assert "cannot connect" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.integration
def test_server_query_and_stop(dolt_server: DoltServer) -> None:
    assert dolt_server.host == "127.0.0.1"
    with dolt_server.client() as c:
        c.query("CREATE DATABASE demo")
        c.query("USE demo")
        c.query("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))")
        c.query("INSERT INTO t VALUES (%s, %s)", (1, "one"))
        assert c.query("SELECT name FROM t WHERE id = %s", (1,)) == [{"name": "one"}]
        assert "demo" in c.databases()
    conns = [x for x in psutil.Process(dolt_server.pid).net_connections("tcp") if x.status == psutil.CONN_LISTEN]
    assert conns and all(x.laddr.ip == "127.0.0.1" for x in conns)
    pid = dolt_server.pid
    dolt_server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.integration
def test_server_start_failure_is_reported(dolt_bin: str, dolt_server: DoltServer, tmp_path: Path) -> None:
    # Same port as a running server: dolt exits at start; the error names the port.
    other = DoltServer(tmp_path / "other-data", port=dolt_server.port, env=dolt_server.env)
    with pytest.raises(GtExtError, match=f"{dolt_server.port} is already in use"):
        other.start(timeout=60)
