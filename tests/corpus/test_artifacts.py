import json
import os
import time

import pytest

from gt_ext.corpus import artifacts
from gt_ext.corpus.artifacts import collect_artifacts, find_artifacts
from gt_ext.corpus.store import Store
from tests.corpus.helpers import make_town_dirs

V1 = "# Witness rules\nNudge idle polecats before escalating. Never kill sessions by hand; use gt.\n"
V2 = "# Witness rules\nNudge idle polecats twice before escalating. Never kill sessions by hand; use gt.\n"


def _town(tmp_path):
    town = make_town_dirs(tmp_path / "town")
    (town / "demo" / "witness").mkdir(parents=True)
    (town / "demo" / "witness" / "CLAUDE.md").write_text(V1)
    (town / ".beads" / "formulas").mkdir(parents=True)
    (town / ".beads" / "formulas" / "patrol.formula.toml").write_text('formula = "patrol"\ndescription = "Walk the rig and check polecats"\n')
    (town / "demo" / ".git").mkdir()
    (town / "demo" / ".git" / "CLAUDE.md").write_text("not an artifact")
    return town


def test_find_and_tag(tmp_path):
    town = _town(tmp_path)
    found = [str(p.relative_to(town)) for p in find_artifacts(town)]
    assert found == [".beads/formulas/patrol.formula.toml", "demo/witness/CLAUDE.md"]
    with Store.open(tmp_path / "c") as st:
        assert collect_artifacts(st, town) == {"new": 2}
        assert collect_artifacts(st, town) == {"unchanged": 2}
        w = [e for e in st.query() if e.role == "witness"][0]
        assert (w.rig, w.source, w.artifact_key) == ("demo", "artifact", "demo:demo/witness/CLAUDE.md")


def test_newer_supersedes_and_recent_revert_is_flagged(tmp_path):
    town = _town(tmp_path)
    f = town / "demo" / "witness" / "CLAUDE.md"
    with Store.open(tmp_path / "c") as st:
        collect_artifacts(st, town)
        f.write_text(V2)
        assert collect_artifacts(st, town)["new"] == 1
        versions = {e.messages[-1]["content"]: e.status for e in st.query(status=None, role="witness")}
        assert versions == {V1: "superseded", V2: "active"}
        f.write_text(V1)  # undo the last edit right away
        assert collect_artifacts(st, town)["revert-flagged"] == 1
        versions = {e.messages[-1]["content"]: e.status for e in st.query(status=None, role="witness")}
        assert versions == {V1: "review", V2: "active"}


def test_old_revert_outside_the_window_applies(tmp_path, monkeypatch):
    town = _town(tmp_path)
    f = town / "demo" / "witness" / "CLAUDE.md"
    with Store.open(tmp_path / "c") as st:
        collect_artifacts(st, town)
        f.write_text(V2)
        collect_artifacts(st, town)
        monkeypatch.setattr(artifacts, "REVERT_WINDOW_S", 0)
        f.write_text(V1)
        os.utime(f, (time.time(), time.time()))
        assert collect_artifacts(st, town)["superseded-old"] == 1
        versions = {e.messages[-1]["content"]: e.status for e in st.query(status=None, role="witness")}
        assert versions == {V1: "active", V2: "superseded"}


# --- gt prime output as artifacts, and versions longer than one example ---------------------------
def _role_text(seed: int, lines: int = 220) -> str:
    """Varied markdown prose like gt prime's (headings, a code fence), `lines` long."""
    import random

    rnd = random.Random(seed)
    words = ("patrol polecat hook bead merge queue nudge escalate witness refinery convoy molecule wisp "
             "mail handoff rig branch worktree session deacon mayor status ready blocked review").split()
    out = ["# Witness Context", ""]
    for i in range(lines):
        if i % 40 == 0:
            out += [f"## Section {i // 40}: {rnd.choice(words)} {rnd.choice(words)}", "```bash",
                    "# not a heading inside a fence", f"gt {rnd.choice(words)} --json", "```"]
        out.append(f"Step {i}: " + " ".join(rnd.choice(words) for _ in range(12)) + ".")
    return "\n".join(out) + "\n"


def test_split_parts_cuts_at_headings_outside_fences():
    text = _role_text(1, lines=400)
    parts = artifacts._split_parts(text, 6000)
    assert len(parts) > 1 and "".join(parts) == text
    assert all(len(p) <= 6000 for p in parts)
    assert all(p.startswith("#") for p in parts[1:])  # each later part starts at a heading
    assert all(p.count("```") % 2 == 0 for p in parts)  # no fence is cut open
    assert artifacts._split_parts("short\n", 6000) == ["short\n"]
    one_long_section = "# Only\n" + "".join(f"line {i} of a long section without headings\n" for i in range(400))
    cut = artifacts._split_parts(one_long_section, 2000)
    assert "".join(cut) == one_long_section and all(len(p) <= 2000 and p.endswith("\n") for p in cut)


def test_prime_versions_supersede_even_when_nearly_identical(tmp_path):
    v1 = _role_text(2)
    v2 = v1 + "Never merge during a deploy freeze; file a bead for the refinery instead.\n"
    with Store.open(tmp_path / "c") as st:
        ing = artifacts.Ingestor(st)
        with st.tx():
            assert artifacts.ingest_prime(ing, "witness", "demo", v1) == "new"
        with st.tx():
            assert artifacts.ingest_prime(ing, "witness", "demo", v1) == "unchanged"
        # v2 is a near-duplicate of v1 (one line added): it must replace v1, not be refused as its copy.
        with st.tx():
            assert artifacts.ingest_prime(ing, "witness", "demo", v2) == "new"
        got = {e.messages[-1]["content"]: e.status for e in st.query(status=None, source="gt-prime")}
        assert got == {v1: "superseded", v2: "active"}
        [ex] = st.query(source="gt-prime")
        assert (ex.role, ex.rig, ex.task, ex.artifact_key) == ("witness", "demo", "general", "demo:gt-prime:witness")
        assert ex.messages[0]["role"] == "system" and "`gt prime`" in ex.messages[1]["content"]
        # The same role in the town (no rig) is its own artifact.
        with st.tx():
            assert artifacts.ingest_prime(ing, "deacon", None, _role_text(3)) == "new"
        assert st.query(source="gt-prime", role="deacon")[0].artifact_key == "town:gt-prime:deacon"


def test_version_with_a_secret_leaves_the_current_one_active(tmp_path):
    v1 = _role_text(4)
    leaky = v1 + 'config = "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBhYmNkZWZnaGlqaw"\n'
    with Store.open(tmp_path / "c") as st:
        ing = artifacts.Ingestor(st)
        with st.tx():
            artifacts.ingest_prime(ing, "refinery", "demo", v1)
        with st.tx():
            assert artifacts.ingest_prime(ing, "refinery", "demo", leaky) == "new"
        got = {e.messages[-1]["content"]: e.status for e in st.query(status=None, source="gt-prime")}
        assert got[v1] == "active" and list(got.values()).count("quarantined") == 1
        with st.tx():  # seen and held back: its quarantine stands, nothing flips
            assert artifacts.ingest_prime(ing, "refinery", "demo", leaky) == "unchanged"
        assert [e.messages[-1]["content"] for e in st.query(source="gt-prime")] == [v1]


def test_long_version_is_stored_in_parts_and_superseded_as_a_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "PART_CHARS", 6000)
    v1 = _role_text(5, lines=300)
    v2 = _role_text(6, lines=300)
    with Store.open(tmp_path / "c") as st:
        ing = artifacts.Ingestor(st)
        with st.tx():
            assert artifacts.ingest_prime(ing, "refinery", "demo", v1) == "new"
        parts = st.query(source="gt-prime")
        assert len(parts) > 1 and "".join(e.messages[-1]["content"] for e in parts) == v1
        assert all(f"of {len(parts)}" in e.messages[1]["content"] for e in parts)
        with st.tx():
            assert artifacts.ingest_prime(ing, "refinery", "demo", v2) == "new"
        assert "".join(e.messages[-1]["content"] for e in st.query(source="gt-prime")) == v2
        assert {e.status for e in st.query(status=None, source="gt-prime") if e.messages[-1]["content"] in v1} == {"superseded"}


@pytest.mark.integration
def test_real_gt_prime_per_role_is_collected_scrubbed_and_versioned(make_town, tmp_path):
    from gt_ext.gastown.prime import gt_prime, prime_targets

    tt = make_town()
    if tt.mode != "gt":
        pytest.skip("town made without the real gt")
    roles = {"mayor", "deacon", "boot", "dog", "witness", "refinery", "polecat", "crew"}
    # Collecting every role's prime leaves bd's state exactly as it was, even where gt's --dry-run
    # would spawn a patrol wisp (no patrol active yet: deacon, witness, refinery).
    before = tt.beads_state()
    with Store.open(tmp_path / "fresh") as st:
        assert collect_artifacts(st, tt.root, prime=True, env=tt.env)["prime-new"] == len(roles)
        for role in ("deacon", "witness", "refinery"):
            text = "".join(e.messages[-1]["content"] for e in st.query(source="gt-prime", role=role))
            assert "Status: **No active patrol**" in text and "read-only" not in text, role
            assert "Run `gt formula list` to troubleshoot" not in text and "Created and hooked patrol wisp" not in text
    assert tt.beads_state() == before
    assert {"wisps", "issues", "events"} <= set(before["hq"]["tables"])  # the check covers the wisp tables
    # A live town's patrol agents have their patrol wisp hooked (gt prime spawns it on first run).
    for t in prime_targets(tt.root):
        if t.role in ("deacon", "witness", "refinery"):
            gt_prime(t.role, tt.root, t.rig, t.workdir, dry_run=True, env=tt.env)
    assert tt.beads_state() != before  # without read-only mode the same primes write (the check can fail)
    live = tt.beads_state()
    with Store.open(tmp_path / "c") as st:
        counts = collect_artifacts(st, tt.root, prime=True, env=tt.env)
        assert counts["prime-new"] == len(roles) and "prime-failed" not in counts, counts
        primes = st.query(source="gt-prime")  # one artifact per role (in parts when very long)
        assert {e.role for e in primes} == roles and len({e.artifact_key for e in primes}) == len(roles)
        by_role = {e.role: e for e in primes}
        for e in primes:
            town_role = e.role in ("mayor", "deacon", "boot", "dog")
            assert e.rig == (None if town_role else "demo") and e.task == "general", e.summary()
            assert e.artifact_key == artifacts.prime_key(e.role, e.rig)
            assert "[GAS TOWN] role:" not in e.messages[-1]["content"]
        assert "# Mayor Context" in by_role["mayor"].messages[-1]["content"]
        # gt's own text names an e-mail address: scrubbed like every other artifact.
        mayor = json.dumps(by_role["mayor"].messages)
        assert "noreply@anthropic.com" not in mayor and "<EMAIL>" in mayor
        assert collect_artifacts(st, tt.root, prime=True, env=tt.env)["prime-unchanged"] == len(roles)
        # The town's CONTEXT.md goes into every role's prime: each role gets a new version.
        (tt.root / "CONTEXT.md").write_text("Deploy freeze until Friday: file beads, merge nothing.\n")
        assert collect_artifacts(st, tt.root, prime=True, env=tt.env)["prime-new"] == len(roles)
        for role in roles:
            versions = st.query(status=None, source="gt-prime", role=role)
            status = {("Deploy freeze" in "".join(e.messages[-1]["content"] for e in versions if e.status == s)): s
                      for s in {e.status for e in versions}}
            assert status == {True: "active", False: "superseded"}, role
    assert tt.beads_state() == live


def test_reversion_waits_in_the_review_queue_and_release_applies_it(tmp_path, capsys):
    """A quick revert of a CLAUDE.md goes to the review queue (`gt corpus quarantine list`); releasing
    it makes the old version current again, so sessions recorded under it are no longer stale and
    those recorded under the replaced version are."""
    from gt_ext.cli import main
    from gt_ext.corpus.shards import convention_timelines, stale_reason
    from gt_ext.corpus.store import StoredExample as Example

    town = _town(tmp_path)
    f = town / "demo" / "witness" / "CLAUDE.md"
    store = town / ".corpus"
    with Store.open(store) as st:
        os.utime(f, (1_780_000_000, 1_780_000_000))
        collect_artifacts(st, town)
        f.write_text(V2)
        os.utime(f, (1_781_000_000, 1_781_000_000))
        collect_artifacts(st, town)
        f.write_text(V1)
        assert collect_artifacts(st, town)["revert-flagged"] == 1
    assert main(["corpus", "--store", str(store), "quarantine", "list", "--json"]) == 0
    [queued] = json.loads(capsys.readouterr().out)
    assert queued["status"] == "review" and "reverts a recent change of demo:demo/witness/CLAUDE.md" in queued["reason"]

    def session(when):
        return Example(id=when, source="claude-jsonl", source_key="k", source_hash="h", messages=[], role="witness",
                       rig="demo", time=when)

    under_v1, under_v2 = session("2026-05-30T00:00:00Z"), session("2026-06-12T00:00:00Z")
    with Store.open(store) as st:
        tl = convention_timelines(st)
        assert stale_reason(under_v1, tl) == "demo:demo/witness/CLAUDE.md" and stale_reason(under_v2, tl) is None
    assert main(["corpus", "--store", str(store), "quarantine", "release", queued["id"]]) == 0
    assert "now the current version of demo:demo/witness/CLAUDE.md" in capsys.readouterr().out
    with Store.open(store) as st:
        versions = {e.messages[-1]["content"]: e.status for e in st.query(status=None, role="witness")}
        assert versions == {V1: "active", V2: "superseded"}
        tl = convention_timelines(st)
        assert stale_reason(under_v1, tl) is None and stale_reason(under_v2, tl) == "demo:demo/witness/CLAUDE.md"
