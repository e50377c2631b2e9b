import json

import pytest

from gt_ext.corpus.format import render_tool_call
from gt_ext.corpus.ingest import Ingestor, Source, Tags
from gt_ext.corpus.scrub import Scrubber
from gt_ext.corpus.store import Store


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "corpus") as st:
        yield st


def _msgs(cmd="gt nudge demo/nux 'run your hook'", extra=""):
    return [{"role": "user", "content": "Patrol the demo rig and look after the polecats."},
            {"role": "assistant", "content": "nux is idle with work on its hook; nudging it. " + extra + "\n"
             + render_tool_call("Bash", {"command": cmd})},
            {"role": "tool", "content": "nudge delivered"},
            {"role": "assistant", "content": "Patrol done: nudged nux."}]


def _ingest(store, msgs, key="k1", h="h1", **tags):
    ing = Ingestor(store, scrubber=Scrubber(extra_usernames=()))
    with store.tx():
        r = ing.ingest(msgs, Tags(**tags), Source("claude-jsonl", key, h))
    ing.finish()
    return r


def test_ingest_tags_scrubs_and_adds_system_prompt(store):
    r = _ingest(store, _msgs(extra="token ghp_" + "x1Y2" * 9), role="witness", rig="demo", outcome="success", session="s1")
    [ex_id] = r.inserted["active"]
    ex = store.get(ex_id)
    assert ex.role == "witness" and ex.task == "patrol" and ex.label == "good"
    assert ex.messages[0]["role"] == "system" and "witness" in ex.messages[0]["content"]
    assert "<SECRET:github_token>" in ex.messages[2]["content"]
    assert "x1Y2x1Y2" not in str(ex.messages)


def test_same_source_twice_is_a_no_op_and_growth_replaces(store):
    _ingest(store, _msgs(), role="witness")
    assert _ingest(store, _msgs(), role="witness").unchanged
    assert store.count() == 1
    grown = _msgs() + [{"role": "user", "content": "and again?"}, {"role": "assistant", "content": "Still all fine, nothing to do."}]
    _ingest(store, grown, h="h2", role="witness")
    assert store.count() == 1
    assert len(store.query()[0].messages) == len(grown) + 1


def test_exact_and_near_duplicates(store):
    _ingest(store, _msgs(), key="a", role="witness")
    r = _ingest(store, _msgs(), key="b", role="witness")
    assert r.duplicates == 1 and not r.inserted
    long = _msgs(extra=" ".join(f"detail{i}" for i in range(300)))
    _ingest(store, long, key="c", role="witness")
    near = [dict(m) for m in long]
    near[1]["content"] += " also"
    r = _ingest(store, near, key="d", role="witness")
    [rid] = r.inserted["rejected"]
    assert store.get(rid).reason.startswith("near-duplicate")


def test_violation_is_never_good(store):
    r = _ingest(store, _msgs(cmd="pkill -f nux"), role="witness", outcome="success")
    ex = store.get(r.inserted["active"][0])
    assert ex.label == "bad" and "pkill" in ex.reason


def test_uncertain_finding_quarantines(store):
    r = _ingest(store, _msgs(extra='blob = "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBhYmNkZWZnaGlqaw"'), role="witness")
    [qid] = r.inserted["quarantined"]
    assert "high_entropy_string" in store.get(qid).reason


def test_quarantined_text_keeps_no_verbatim_secret(store):
    """Issue #20: a quarantined example kept its suspected secret verbatim in corpus.db."""
    import stat

    from gt_ext.corpus.seal import Sealer, unseal

    value = "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBhYmNkZWZnaGlqaw"
    r = _ingest(store, _msgs(extra=f'blob = "{value}" and token ghp_{"a1B2" * 9}'), role="witness")
    [qid] = r.inserted["quarantined"]
    ex = store.get(qid)
    text = json.dumps(ex.messages)
    assert value not in text and "<SEALED:high_entropy_string:0>" in text and "<SECRET:github_token>" in text
    store.db.execute("PRAGMA wal_checkpoint(FULL)")
    for f in store.root.glob("corpus.db*"):  # not in the database file, its WAL, anywhere
        assert value.encode() not in f.read_bytes(), f
    sealed = store.sealed(qid)
    assert [s.placeholder for s in sealed.values()] == [None]
    key = store.root / "quarantine.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert value in unseal(text, sealed, Sealer(store.root))
    store.delete(qid)
    assert store.sealed(qid) == {}


def test_retag_when_bead_link_arrives_later(store):
    _ingest(store, _msgs(), role="witness", session="s9")
    _ingest(store, _msgs(), role="witness", session="s9", bead="dm-7", outcome="failure")
    ex = store.query()[0]
    assert ex.bead == "dm-7" and ex.outcome == "failure" and ex.label == "bad"


def _distinct(i: int, cmd: str = "gt hook") -> list[dict]:
    import random

    words = " ".join(random.Random(i).choice(["alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo",
                                              "lima", "mike", "oscar", "papa", "romeo", "tango", "victor"]) for _ in range(40))
    return [{"role": "user", "content": f"Job {i}: {words}"},
            {"role": "assistant", "content": f"Working job {i}: {words}\n" + render_tool_call("Bash", {"command": cmd})}]


def test_per_source_cap(store, monkeypatch):
    from gt_ext.corpus import gates

    monkeypatch.setattr(gates, "source_cap", lambda total: 3)
    ing = Ingestor(store, scrubber=Scrubber(extra_usernames=()))
    with store.tx():
        for i in range(5):
            ing.ingest(_distinct(i), Tags(role="crew"), Source("curated", f"k{i}", f"h{i}", group="file:flood.jsonl"))
        ing.ingest(_distinct(99), Tags(role="crew"), Source("curated", "other", "h", group="file:other.jsonl"))
    assert store.count(status="active") == 4
    assert all(e.reason == "per-source cap reached" for e in store.query(status="rejected"))


def test_anomalous_batch_goes_to_review(store):
    first = Ingestor(store, scrubber=Scrubber(extra_usernames=()))
    with store.tx():
        for i in range(60):
            first.ingest(_distinct(i), Tags(role="crew", outcome="success"), Source("curated", f"a{i}", f"a{i}"))
    assert first.finish() == []
    batch = Ingestor(store, scrubber=Scrubber(extra_usernames=()))
    with store.tx():
        for i in range(100, 108):
            batch.ingest(_distinct(i, cmd="git push --force origin main"), Tags(role="crew"), Source("curated", f"b{i}", f"b{i}"))
    flags = batch.finish()
    assert flags and "violation_rate" in flags[0]
    assert store.count(status="review") == 8 and store.count(status="active") == 60


def test_unquoted_token_and_export_secret_never_reach_a_shard(store, tmp_path):
    """Issue #20: both were stored active and exported verbatim."""
    from gt_ext.corpus.shards import write_shards

    tok = "Zp3Kq9Lm2Xv8Rt5Wb1Nc7Hd4Jf6Gs0Ya2Ue9Io3Qw"
    msgs = _msgs(cmd=f"export MY_SECRET=hunter2x && ./deploy.sh {tok}",
                 extra=f"The job logged `worker ready, key {tok}`.")
    [ex_id] = _ingest(store, msgs, role="witness", rig="demo", outcome="success", session="s9").inserted["active"]
    text = str(store.get(ex_id).messages)
    assert tok not in text and "hunter2x" not in text
    write_shards(store, tmp_path / "out", all_rigs=True)
    shards = "".join(p.read_text() for p in (tmp_path / "out").rglob("*.jsonl"))
    assert "MY_SECRET=<SECRET:" in shards and tok not in shards and "hunter2x" not in shards
