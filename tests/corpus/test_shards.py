import json

import pytest

from gt_ext.corpus.ingest import Ingestor, Source, Tags
from gt_ext.corpus.planted import secrets_and_decoys
from gt_ext.corpus.sample_town import generate, ingest_sessions
from gt_ext.corpus.scrub import Scrubber
from gt_ext.corpus.shards import verify_shards, write_shards
from gt_ext.corpus.store import Store
from gt_ext.errors import GtExtError


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    st = Store.open(root / "corpus")
    ingest_sessions(st, generate(seed=3, witness=8, per_role=3))
    yield st
    st.close()


def _all_text(out):
    return "".join(p.read_text() for p in out.rglob("*.jsonl"))


def test_layout_manifest_and_determinism(sample_store, tmp_path):
    m1 = write_shards(sample_store, tmp_path / "a", all_rigs=True)
    m2 = write_shards(sample_store, tmp_path / "b", all_rigs=True)
    assert m1["corpus_hash"] == m2["corpus_hash"] and m1["files"] == m2["files"]
    assert verify_shards(tmp_path / "a")["corpus_hash"] == m1["corpus_hash"]
    assert "sft/witness/patrol/train.jsonl" in m1["files"]
    rec = json.loads((tmp_path / "a" / "sft/witness/patrol/train.jsonl").read_text().splitlines()[0])
    assert set(rec) == {"id", "role", "task", "messages", "provenance"}
    assert set(rec["provenance"]) >= {"source", "session", "rig", "bead", "user", "time", "source_hash"}
    dpo_files = [f for f in m1["files"] if f.startswith("dpo/witness/")]
    assert dpo_files
    pair = json.loads((tmp_path / "a" / dpo_files[0]).read_text().splitlines()[0])
    assert pair["chosen"] != pair["rejected"] and pair["prompt"][-1]["role"] != "assistant"
    # SFT never holds a failure or a convention violation.
    for line in _all_text(tmp_path / "a").splitlines():
        r = json.loads(line)
        if "messages" in r:
            text = json.dumps(r["messages"])
            assert "pkill" not in text and "--no-verify" not in text and "kill-session" not in text
    # A tampered file is caught.
    f = tmp_path / "a" / "sft/witness/patrol/train.jsonl"
    f.write_text(f.read_text() + "\n")
    with pytest.raises(GtExtError, match="hash differs"):
        verify_shards(tmp_path / "a")


def test_refuses_to_clobber(sample_store, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep")
    with pytest.raises(GtExtError, match="not a corpus export"):
        write_shards(sample_store, tmp_path / "x")
    write_shards(sample_store, tmp_path / "y")
    with pytest.raises(GtExtError, match="--overwrite"):
        write_shards(sample_store, tmp_path / "y")
    write_shards(sample_store, tmp_path / "y", overwrite=True)


def test_planted_secrets_never_reach_an_export(tmp_path):
    secrets, _ = secrets_and_decoys(7)
    st = Store.open(tmp_path / "c")
    ing = Ingestor(st, scrubber=Scrubber(extra_usernames=()))
    with st.tx():
        for i, (kind, line, _v) in enumerate(secrets):
            msgs = [{"role": "user", "content": f"Set up the service config, step {i} ({kind})."},
                    {"role": "assistant", "content": f"Running the setup step for {kind} now, then checking it."},
                    {"role": "tool", "content": f"$ cat .env\n{line}\nok"},
                    {"role": "assistant", "content": f"The {kind} setting is in place and the check passed."}]
            ing.ingest(msgs, Tags(role="crew", outcome="success", session=f"s{i}"), Source("curated", f"k{i}", f"h{i}"))
    ing.finish()  # a batch is exported once judged
    out = tmp_path / "out"
    write_shards(st, out, val_pct=0)
    text = _all_text(out)
    assert text.count('"role": "crew"') >= len(secrets) * 0.8
    for kind, _line, value in secrets:
        assert value not in text, kind


def _rig_store(tmp_path):
    st = Store.open(tmp_path / "town" / ".corpus")
    ing = Ingestor(st, scrubber=Scrubber(extra_usernames=()))
    with st.tx():
        for rig in ("alpha", "beta", "gamma", None):
            where = rig or "the town"
            ing.ingest([{"role": "user", "content": f"Patrol {where} please, check every polecat."},
                        {"role": "assistant", "content": f"All polecats of {where} are working; nothing to do."}],
                       Tags(role="witness", rig=rig, outcome="success"), Source("curated", str(rig), str(rig)))
    ing.finish()
    return st


def _share(tmp_path, rig, value):
    d = tmp_path / "town" / rig / "settings"
    d.mkdir(parents=True, exist_ok=True)
    (d / "gt-ext.json").write_text(json.dumps({"corpus": {"share": value}}))


def test_rig_local_by_default_and_sharing_is_each_rigs_own_opt_in(tmp_path):
    st = _rig_store(tmp_path)
    out = tmp_path / "o1"
    m = write_shards(st, out, rig="alpha", val_pct=0)
    text = _all_text(out)
    assert "alpha" in text and "the town" in text and "beta" not in text and "gamma" not in text
    assert m["scope"] == "rig alpha" and m["rigs"] == ["alpha"]
    # The default (no rig: a town-level job) takes no rig's examples at all.
    m = write_shards(st, out, val_pct=0, overwrite=True)
    assert "the town" in _all_text(out) and m["rigs"] == [] and m["scope"] == "town-level"
    # A rig opts in in its own settings; another rig's `false`, or a town-level list, is not an opt-in.
    _share(tmp_path, "beta", True)
    _share(tmp_path, "gamma", False)
    (tmp_path / "town" / "settings").mkdir(exist_ok=True)
    (tmp_path / "town" / "settings" / "gt-ext.json").write_text(json.dumps({"corpus": {"share": ["gamma"]}}))
    m = write_shards(st, out, rig="alpha", val_pct=0, overwrite=True)
    assert m["rigs"] == ["alpha", "beta"]
    assert write_shards(st, out, val_pct=0, overwrite=True)["rigs"] == ["beta"]
    assert write_shards(st, out, val_pct=0, overwrite=True, all_rigs=True)["rigs"] == ["alpha", "beta", "gamma"]
    _share(tmp_path, "gamma", "yes")
    with pytest.raises(GtExtError, match=r"gamma/settings/gt-ext.json: corpus.share must be true or false"):
        write_shards(st, out, val_pct=0, overwrite=True)


def test_role_out_of_scope_says_where_its_examples_are(tmp_path):
    st = Store.open(tmp_path / "town" / ".corpus")
    ing = Ingestor(st, scrubber=Scrubber(extra_usernames=()))
    with st.tx():
        ing.ingest([{"role": "user", "content": "Merge the queue of alpha now please."},
                    {"role": "assistant", "content": "Rebased and merged the two waiting branches of alpha."}],
                   Tags(role="refinery", rig="alpha", outcome="success"), Source("curated", "r", "r"))
    ing.finish()
    with pytest.raises(GtExtError, match=r"no refinery examples in scope town-level \(its examples are in: alpha 1\)"):
        write_shards(st, tmp_path / "o", role="refinery")
    m = write_shards(st, tmp_path / "o", role="refinery", rig="alpha", val_pct=0)
    assert m["counts"]["sft"] == {"refinery": {"general": {"train": 1, "val": 0}}} and m["role"] == "refinery"


def _session(ing, n, when, rig="alpha", role="witness"):
    ing.ingest([{"role": "user", "content": f"Patrol request number {n} for the rig, check the polecats."},
                {"role": "assistant", "content": f"Checked every polecat for request {n}; all are working."}],
               Tags(role=role, rig=rig, outcome="success", session=f"s{n}", time=when),
               Source("claude-jsonl", f"claude:s{n}", f"h{n}"))


def test_sessions_under_a_superseded_convention(tmp_path, monkeypatch):
    """A session recorded before the current version of a CLAUDE.md in its scope is stale: dropped,
    kept, or kept in share W; sessions after the change, other rigs' and other roles' stay."""
    from gt_ext.corpus import artifacts

    town = tmp_path / "town"
    claude = town / "alpha" / "witness" / "CLAUDE.md"
    claude.parent.mkdir(parents=True)
    st = Store.open(town / ".corpus")
    ing = Ingestor(st, scrubber=Scrubber(extra_usernames=()))

    def version(text, mtime):
        claude.write_text(text)
        import os

        os.utime(claude, (mtime, mtime))
        with st.tx():
            return artifacts.ingest_artifact(ing, town, claude)

    t0 = 1_780_000_000  # 2026-05-28
    assert version("# Witness rules\nNudge idle polecats after 10 minutes of silence.\n", t0) == "new"
    with st.tx():
        for n in range(40):  # before the change
            _session(ing, n, "2026-05-29T10:00:00Z")
        _session(ing, 100, "2026-05-29T10:00:00Z", rig="beta")  # another rig: its conventions did not change
        _session(ing, 101, "2026-05-29T10:00:00Z", role="polecat")  # a role the rules are not for
        _session(ing, 102, "2026-06-10T10:00:00Z")  # recorded after the change
    ing.finish()  # the batch is judged: exportable
    # No version was replaced yet: nothing is stale.
    assert write_shards(st, tmp_path / "o", rig="alpha", all_rigs=False, val_pct=0)["stale_sessions"]["stale"] == 0
    monkeypatch.setattr(artifacts, "REVERT_WINDOW_S", 0)
    assert version("# Witness rules\nNudge idle polecats after 20 minutes of silence; escalate after 3.\n",
                   t0 + 10 * 86400) == "new"
    ids = lambda out: {json.loads(line)["provenance"]["session"] for line in _all_text(out).splitlines() if line}  # noqa: E731
    m = write_shards(st, tmp_path / "o", all_rigs=True, val_pct=0, overwrite=True)
    assert m["stale_sessions"] == {"policy": "drop", "stale": 40, "exported": 0,
                                   "conventions": {"alpha:alpha/witness/CLAUDE.md": 40}}
    assert {"s100", "s101", "s102"} <= ids(tmp_path / "o") and "s0" not in ids(tmp_path / "o")
    m = write_shards(st, tmp_path / "o", all_rigs=True, val_pct=0, overwrite=True, stale="keep")
    assert m["stale_sessions"]["exported"] == 40 and "s0" in ids(tmp_path / "o")
    m = write_shards(st, tmp_path / "o", all_rigs=True, val_pct=0, overwrite=True, stale="weight=0.25")
    kept = m["stale_sessions"]["exported"]
    assert 4 <= kept <= 18 and len([s for s in ids(tmp_path / "o") if s[1:].isdigit() and int(s[1:]) < 40]) == kept
    assert write_shards(st, tmp_path / "p", all_rigs=True, val_pct=0, stale="weight=0.25")["files"] == m["files"]
    for bad in ("weight=0", "weight=1.5", "half", "weight=x"):
        with pytest.raises(GtExtError, match="--stale-sessions must be drop, keep or weight=W"):
            write_shards(st, tmp_path / "q", stale=bad)
