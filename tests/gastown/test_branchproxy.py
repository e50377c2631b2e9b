"""The branch proxy: protocol rewrites on hand-built packets, then a real dolt sql-server behind it."""

from __future__ import annotations

import struct

import pytest

from gt_ext.errors import GtExtError
from gt_ext.gastown.branchproxy import (
    CLIENT_CONNECT_WITH_DB,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    COM_INIT_DB,
    COM_QUERY,
    BranchProxy,
    rewrite_command,
    rewrite_handshake,
)

PLUGIN_AUTH = 0x00080000


def handshake(db: str | None, lenenc: bool = False, auth: bytes = b"\x01" * 20) -> bytes:
    caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | PLUGIN_AUTH
    if db is not None:
        caps |= CLIENT_CONNECT_WITH_DB
    if lenenc:
        caps |= CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    out = struct.pack("<IIB", caps, 1 << 24, 33) + b"\0" * 23 + b"root\0" + bytes((len(auth),)) + auth
    if db is not None:
        out += db.encode() + b"\0"
    return out + b"mysql_native_password\0"


@pytest.mark.parametrize("lenenc", [False, True])
def test_handshake_database_renamed_rest_kept(lenenc: bool) -> None:
    before = handshake("demo", lenenc)
    after = rewrite_handshake(before, "demo", "demo/prefs-x-a")
    assert after == handshake("demo/prefs-x-a", lenenc)
    assert after.endswith(b"mysql_native_password\0")


def test_handshake_other_or_no_database_untouched() -> None:
    for pkt in (handshake("hq"), handshake(None), handshake("demo2")):
        assert rewrite_handshake(pkt, "demo", "demo/b") == pkt


def test_commands_renamed_only_for_the_database() -> None:
    assert rewrite_command(bytes((COM_INIT_DB,)) + b"demo", "demo", "demo/b") == bytes((COM_INIT_DB,)) + b"demo/b"
    assert rewrite_command(bytes((COM_QUERY,)) + b"USE `demo`;", "demo", "demo/b") == bytes((COM_QUERY,)) + b"USE `demo/b`"
    for same in (bytes((COM_INIT_DB,)) + b"hq", bytes((COM_QUERY,)) + b"SELECT * FROM demo.issues",
                 bytes((COM_QUERY,)) + b"use demo2"):
        assert rewrite_command(same, "demo", "demo/b") == same


def test_bad_names_refused() -> None:
    with pytest.raises(GtExtError, match="bad branch name"):
        BranchProxy(3307, "demo", "a`b")
    with pytest.raises(GtExtError, match="bad database name"):
        BranchProxy(3307, "demo/x", "b")


@pytest.mark.integration
def test_connections_land_on_the_branch(dolt_server) -> None:  # noqa: ANN001
    import pymysql

    with dolt_server.client() as c:
        c.query("CREATE DATABASE demo")
        c.query("USE demo")
        c.query("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
        c.query("INSERT INTO t VALUES (1, 'main')")
        c.query("CALL DOLT_COMMIT('-Am', 'init')")
        c.query("CALL DOLT_BRANCH('feature')")
    with BranchProxy(dolt_server.port, "demo", "feature") as proxy:
        conn = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", database="demo",
                               autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT active_branch()")
                assert cur.fetchone()[0] == "feature"
                cur.execute("UPDATE t SET v = 'feature' WHERE id = 1")
                conn.select_db("demo")  # COM_INIT_DB: still the branch
                cur.execute("SELECT active_branch(), v FROM t")
                assert cur.fetchone() == ("feature", "feature")
        finally:
            conn.close()
        bare = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", autocommit=True)
        try:
            with bare.cursor() as cur:
                cur.execute("USE demo")  # COM_QUERY USE: the branch too
                cur.execute("SELECT active_branch()")
                assert cur.fetchone()[0] == "feature"
        finally:
            bare.close()
    with dolt_server.client("demo") as c:  # straight to the server: main never saw the write
        assert c.query("SELECT active_branch() AS b, v FROM t") == [{"b": "main", "v": "main"}]
