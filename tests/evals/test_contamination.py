"""The contamination guard refuses tasks whose prompt shares n-grams with the training corpus."""

from __future__ import annotations

import json

import pytest

from gt_ext.errors import GtExtError
from gt_ext.evals import contamination, runner
from gt_ext.evals import suite as suite_mod

LEAK = "polecat furiosa: hook gt-4f2 in_progress, session alive, no output for 32 min, never nudged"


def _corpus(tmp_path, text):
    d = tmp_path / "corpus" / "sft" / "witness" / "patrol"
    d.mkdir(parents=True)
    rec = {"id": "x", "role": "witness", "task": "patrol",
           "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "{}"}]}
    (d / "train.jsonl").write_text(json.dumps(rec) + "\n")
    return tmp_path / "corpus"


def test_leaked_task_is_refused_and_reported(tmp_path):
    corpus = _corpus(tmp_path, f"Report: {LEAK}. What now?")
    rep = contamination.check_tasks(suite_mod.load("builtin:witness").tasks, corpus)
    assert rep.refused == ["w-patrol-01-idle-with-hook"]
    assert rep.overlap["w-patrol-01-idle-with-hook"] > 0.8  # all but the n-grams spanning the rig var
    assert rep.examples["w-patrol-01-idle-with-hook"] in LEAK.replace(":", "").replace(",", "").replace("_", " ")
    # A looser threshold lets a partial overlap through but still reports it.
    half = _corpus(tmp_path / "b", "polecat furiosa: hook gt-4f2 in_progress, session alive, no output")
    rep = contamination.check_tasks(suite_mod.load("builtin:witness").tasks, half, max_overlap=0.5)
    assert rep.refused == [] and 0 < rep.overlap["w-patrol-01-idle-with-hook"] <= 0.5


def test_evaluate_drops_refused_tasks(tmp_path):
    corpus = _corpus(tmp_path, LEAK)
    res = runner.evaluate("base:tiny-llama", "builtin:witness", corpus=corpus, write=False, limit=3,
                          generate=lambda b, p: ["{}" for _ in b])
    assert [t.id for t in res.tasks] == ["w-patrol-02-busy", "w-patrol-03-done-left-session"]
    assert res.to_dict()["contamination"]["refused"] == ["w-patrol-01-idle-with-hook"]


def test_bad_corpus_inputs(tmp_path):
    with pytest.raises(GtExtError, match="corpus not found"):
        list(contamination.corpus_texts(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GtExtError, match="no .jsonl"):
        list(contamination.corpus_texts(tmp_path / "empty"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(GtExtError, match="bad.jsonl:1: invalid JSON"):
        list(contamination.corpus_texts(bad))
    with pytest.raises(GtExtError, match="max-overlap"):
        contamination.check_texts({"a": "x"}, ["y"], max_overlap=2)
