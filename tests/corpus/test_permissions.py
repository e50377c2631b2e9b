"""Issue #20: corpus.db, corpus folders, spool, quarantine, exports and transcripts were world-readable."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from gt_ext.corpus.ingest import Ingestor, Source, Tags
from gt_ext.corpus.scrub import Scrubber
from gt_ext.corpus.shards import write_shards
from gt_ext.corpus.spool import write_event
from gt_ext.corpus.store import Store

REPO = Path(__file__).resolve().parents[2]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(autouse=True)
def _open_umask():
    old = os.umask(0o022)  # what a default login shell gives: files 644, folders 755
    yield
    os.umask(old)


def _example(store):
    ing = Ingestor(store, scrubber=Scrubber(extra_usernames=()))
    msgs = [{"role": "user", "content": "Patrol the demo rig and check the polecats."},
            {"role": "assistant", "content": "All three polecats are working; nothing to do this round."}]
    uncertain = [{"role": "user", "content": 'use config = "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBhYmNkZWZnaGlqaw"'},
                 {"role": "assistant", "content": "Noted, I will use that configuration value for the run."}]
    with store.tx():
        ing.ingest(msgs, Tags(role="witness", outcome="success"), Source("curated", "a", "h1"))
        ing.ingest(uncertain, Tags(role="witness"), Source("curated", "b", "h2"))
    ing.finish()


def test_store_folders_database_and_wal_are_owner_only(tmp_path):
    with Store.open(tmp_path / "corpus") as st:
        _example(st)
        assert st.count(status="quarantined") == 1
        assert mode(st.root) == 0o700 and mode(st.spool_dir) == 0o700
        for name in ("corpus.db", "corpus.db-wal", "corpus.db-shm"):
            assert mode(st.root / name) == 0o600, name


def test_an_existing_world_readable_store_is_tightened(tmp_path):
    root = tmp_path / "corpus"
    with Store.open(root) as st:
        _example(st)
    os.chmod(root, 0o755)
    os.chmod(root / "corpus.db", 0o644)
    with Store.open(root):
        assert mode(root) == 0o700 and mode(root / "corpus.db") == 0o600


def test_spool_files_from_the_library_and_the_hook_are_owner_only(tmp_path):
    spool = tmp_path / "fresh" / "spool"
    p = write_event(spool, "bead_close", {"id": "gt-1"})
    hook_spool = tmp_path / "hook" / "spool"
    subprocess.run([str(REPO / "hooks" / "on_close"), "gt-2", "close"], input=b'{"id": "gt-2"}',
                   env={"GT_EXT_SPOOL": str(hook_spool), "PATH": os.environ["PATH"], "GT_EXT_NO_AUTOPROCESS": "1"},
                   check=True)
    [hp] = hook_spool.glob("*.json")
    assert mode(spool) == 0o700 and mode(p) == 0o600
    assert mode(hook_spool) == 0o700 and mode(hp) == 0o600


def test_export_shards_are_owner_only(tmp_path):
    with Store.open(tmp_path / "corpus") as st:
        _example(st)
        write_shards(st, tmp_path / "out", all_rigs=True)
    out = tmp_path / "out"
    assert mode(out) == 0o700
    files = [p for p in out.rglob("*")]
    assert files and all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in files)
    assert json.loads((out / "manifest.json").read_text())["corpus_hash"]


def test_node0_transcripts_are_owner_only(tmp_path):
    from gt_ext.serve.transcript import Transcript

    t = Transcript(tmp_path / "work", "witness:1", session_id="s-1", folder=tmp_path / "projects")
    t.user("check the polecats")
    t.close()
    assert mode(t.path) == 0o600 and mode(t.path.parent) == 0o700
