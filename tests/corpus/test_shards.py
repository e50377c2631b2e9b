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
    m1 = write_shards(sample_store, tmp_path / "a")
    m2 = write_shards(sample_store, tmp_path / "b")
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
    out = tmp_path / "out"
    write_shards(st, out, val_pct=0)
    text = _all_text(out)
    assert text.count('"role": "crew"') >= len(secrets) * 0.8
    for kind, _line, value in secrets:
        assert value not in text, kind


def test_rig_local_by_default_and_sharing_opt_in(tmp_path):
    st = Store.open(tmp_path / "town" / ".corpus")
    ing = Ingestor(st, scrubber=Scrubber(extra_usernames=()))
    with st.tx():
        for rig in ("alpha", "beta", "gamma"):
            ing.ingest([{"role": "user", "content": f"Patrol {rig} please, check every polecat."},
                        {"role": "assistant", "content": f"All polecats of {rig} are working; nothing to do."}],
                       Tags(role="witness", rig=rig, outcome="success"), Source("curated", rig, rig))
    out = tmp_path / "o1"
    write_shards(st, out, rig="alpha", val_pct=0)
    text = _all_text(out)
    assert "alpha" in text and "beta" not in text and "gamma" not in text
    (tmp_path / "town" / "settings").mkdir()
    (tmp_path / "town" / "settings" / "gt-ext.json").write_text(json.dumps({"corpus": {"share": ["beta"]}}))
    write_shards(st, out, rig="alpha", val_pct=0, overwrite=True)
    text = _all_text(out)
    assert "beta" in text and "gamma" not in text
