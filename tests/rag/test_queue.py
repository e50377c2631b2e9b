"""The reindex queue hooks write: fast, standard-library-only, whole files, drained by the indexer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gt_ext.rag import queue


def test_enqueue_pending_ack(tmp_path):
    p1 = queue.enqueue(tmp_path, {"kind": "bead", "op": "create", "beads_dir": "/t/.beads", "id": "t-1",
                                  "issue": {"description": "AKIA... secret text"}})
    p2 = queue.enqueue(tmp_path, {"kind": "file", "path": "/t/CLAUDE.md"})
    assert queue.pending(tmp_path) == sorted([p1, p2])
    evs = queue.read_queued(queue.pending(tmp_path))
    assert evs[0]["id"] == "t-1" and "issue" not in evs[0]  # bead text is never spooled
    queue.ack([p1])
    assert queue.pending(tmp_path) == [p2]


def test_temp_and_corrupt_files(tmp_path):
    d = queue.queue_dir(tmp_path)
    d.mkdir(parents=True)
    (d / ".x.json.tmp").write_text("{")
    (d / "1-bad.json").write_text("{not json")
    assert [p.name for p in queue.pending(tmp_path)] == ["1-bad.json"]
    assert queue.read_queued(queue.pending(tmp_path)) == [{"kind": "corrupt", "path": str(d / "1-bad.json")}]


def test_rejects_eventless_input(tmp_path):
    with pytest.raises(ValueError):
        queue.enqueue(tmp_path, {"op": "create"})


def test_import_is_light(tmp_path):
    code = ("import sys, gt_ext.rag.queue as s; s.enqueue(sys.argv[1], {'kind': 'bead'});"
            "heavy = [m for m in ('chromadb', 'torch', 'transformers', 'sentence_transformers') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []
    assert len(queue.pending(tmp_path)) == 1
