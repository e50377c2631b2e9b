"""node0 sessions as corpus sources: the agent's transcript format, its stop event, bead-close
links, the model tag and what export does with a model's own outputs; the event-log index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gt_ext.corpus.collect import process_spool
from gt_ext.corpus.eventindex import EventIndex
from gt_ext.corpus.parsers import parse_claude_jsonl
from gt_ext.corpus.shards import parse_self_outputs, read_manifest, shard_files, write_shards
from gt_ext.corpus.spool import write_event
from gt_ext.corpus.store import Store
from gt_ext.errors import GtExtError
from gt_ext.serve.transcript import Transcript
from tests.corpus.helpers import make_town_dirs, write_transcript

WITNESS = "demo/witness"


def node0_session(projects: Path, cwd: Path, sid: str, n: int = 0, bead: str | None = None) -> Transcript:
    """A node0 witness session as the agent writes it: a patrol question, a bd call, an answer."""
    t = Transcript(cwd, model="witness:1", session_id=sid, folder=projects,
                   meta={"role": "witness", "rig": "demo", "actor": WITNESS, "town": str(cwd.parent)})
    t.set_bead(bead)
    t.user(f"Patrol check {n}: polecat p{n} printed nothing for 40 minutes. What do you do?")
    t.assistant(f"Checking p{n} first.", [("toolu_1", "Bash", {"command": f"gt polecat status demo/p{n}"})])
    t.tool_result("toolu_1", f"p{n}: idle 40m, hook dm-{n}", False)
    t.assistant(f"p{n} is idle with work on its hook: I nudge it (round {n}).")
    t.close()
    return t


def test_transcript_carries_its_tags_and_parses_as_node0(tmp_path):
    work = tmp_path / "town" / "demo" / "witness"
    work.mkdir(parents=True)
    t = node0_session(tmp_path / "projects", work, "s-1", bead="dm-7")
    s = parse_claude_jsonl(t.path)
    assert s.format == "node0" and s.session == "s-1" and s.cwd == str(work.resolve())
    assert s.meta == {"role": "witness", "rig": "demo", "actor": WITNESS, "bead": "dm-7", "model": "witness:1",
                      "town": str(work.parent)}
    assert [m["role"] for m in s.messages] == ["user", "assistant", "tool", "assistant"]


def test_claude_transcript_records_its_model(tmp_path):
    p = write_transcript(tmp_path, "c-1", "/w", "hello", [("Looking.", "ls", "a b")])
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    for e in lines:
        if e["type"] == "assistant":
            e["message"]["model"] = "claude-opus-4-5"
    p.write_text("".join(json.dumps(e) + "\n" for e in lines))
    s = parse_claude_jsonl(p)
    assert s.format == "claude" and s.meta == {"model": "claude-opus-4-5"}


def test_stop_event_and_bead_close_store_and_link_a_node0_session(tmp_path):
    town = make_town_dirs(tmp_path / "town")
    work = town / "demo" / "witness"
    work.mkdir(parents=True)
    projects = tmp_path / "projects"
    t = node0_session(projects, work, "n0-1")
    # gt's session_start for it (what `gt prime --hook` logs), then the witness closes a bead.
    (town / ".events.jsonl").write_text(json.dumps(
        {"type": "session_start", "actor": WITNESS, "payload": {"session_id": "n0-1", "role": "witness",
                                                                "cwd": str(work)}}) + "\n")
    with Store.open(town / ".corpus") as st:
        write_event(st.spool_dir, "session_stop", {"session_id": "n0-1", "transcript_path": str(t.path)},
                    env={"GT_ROLE": WITNESS, "GT_RIG": "demo", "BD_ACTOR": WITNESS})
        rep = process_spool(st, town, projects)
        assert rep.errors == [] and rep.stored == {"active": 1}
        [ex] = st.query(source="node0-jsonl")
        assert (ex.role, ex.rig, ex.user, ex.model, ex.session, ex.bead) == ("witness", "demo", WITNESS, "witness:1",
                                                                            "n0-1", None)
        assert ex.provenance()["model"] == "witness:1"
        issue = {"id": "dm-9", "title": "patrol", "status": "closed", "close_reason": "done", "assignee": WITNESS}
        write_event(st.spool_dir, "bead_close", [issue], argv=["dm-9", "close"])
        rep = process_spool(st, town, projects)
        assert rep.errors == [] and rep.unresolved_beads == []
        [ex] = st.query(source="node0-jsonl")
        assert ex.bead == "dm-9" and ex.outcome == "success" and st.link("n0-1")["bead"] == "dm-9"


def test_list_filters_by_source(tmp_path, capsys):
    from gt_ext.cli import app, main

    town = make_town_dirs(tmp_path / "town")
    work = town / "demo" / "witness"
    work.mkdir(parents=True)
    t = node0_session(tmp_path / "projects", work, "n0-2")
    claude = write_transcript(tmp_path / "projects", "c-2", "/w", "hi", [("Listing.", "bd list", "none")])
    with Store.open(town / ".corpus") as st:
        for p, sid in ((t.path, "n0-2"), (claude, "c-2")):
            write_event(st.spool_dir, "session_stop", {"session_id": sid, "transcript_path": str(p)},
                        env={"GT_ROLE": WITNESS})
        assert process_spool(st, town, tmp_path / "projects").errors == []
    run = CliRunner().invoke(app, ["corpus", "--store", str(town / ".corpus"), "list", "--source", "node0", "--json"])
    assert run.exit_code == 0, run.output
    [row] = json.loads(run.output)
    assert (row["source"], row["role"], row["model"], row["session"]) == ("node0-jsonl", "witness", "witness:1", "n0-2")
    assert main(["corpus", "--store", str(town / ".corpus"), "list", "--source", "telnet"]) == 2
    assert "--source 'telnet'" in capsys.readouterr().err


def _sft_ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for f in shard_files(out, ("sft",)) for line in f.read_text().splitlines()]


def test_export_self_outputs_drop_keep_weight(tmp_path):
    town = make_town_dirs(tmp_path / "town")
    work = town / "demo" / "witness"
    work.mkdir(parents=True)
    projects = tmp_path / "projects"
    with Store.open(town / ".corpus") as st:
        for n in range(40):
            t = node0_session(projects, work, f"n0-{n}", n)
            write_event(st.spool_dir, "session_stop", {"session_id": f"n0-{n}", "transcript_path": str(t.path)},
                        env={"GT_ROLE": WITNESS})
        claude = write_transcript(projects, "c-9", "/w", "Patrol the rig please.",
                                  [("Listing polecats.", "gt polecat list demo", "p0 p1")])
        write_event(st.spool_dir, "session_stop", {"session_id": "c-9", "transcript_path": str(claude)},
                    env={"GT_ROLE": WITNESS})
        assert process_spool(st, town, projects).errors == []
        node0_ids = {e.id for e in st.query(source="node0-jsonl")}
        assert len(node0_ids) == 40

        default = write_shards(st, tmp_path / "default", all_rigs=True)
        assert set(_sft_ids(tmp_path / "default")) & node0_ids == set()
        assert default["self_outputs"] == {"policy": "drop", "examples": 40, "kept": 0}
        write_shards(st, tmp_path / "keep", self_outputs="keep", all_rigs=True)
        assert node0_ids <= set(_sft_ids(tmp_path / "keep"))
        half = write_shards(st, tmp_path / "half", self_outputs="weight=0.5", all_rigs=True)
        kept = set(_sft_ids(tmp_path / "half")) & node0_ids
        assert 0 < len(kept) < 40 and half["self_outputs"]["kept"] == len(kept)
        write_shards(st, tmp_path / "half2", self_outputs="weight=0.5", all_rigs=True)
        assert set(_sft_ids(tmp_path / "half2")) & node0_ids == kept  # deterministic
        assert read_manifest(tmp_path / "half")["self_outputs"]["policy"] == "weight=0.5"
    for bad in ("sometimes", "weight=2", "weight=x", "weight=0"):
        with pytest.raises(GtExtError, match="--self-outputs"):
            parse_self_outputs(bad)


def _append(path: Path, *events: dict) -> None:
    with open(path, "a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def test_event_index_reads_only_what_is_new(tmp_path):
    log = tmp_path / ".events.jsonl"
    _append(log, {"type": "session_start", "actor": "a", "payload": {"session_id": "s1", "cwd": "/a"}},
            {"type": "nudge", "actor": "a", "payload": {"to": "b"}})
    with Store.open(tmp_path / "corpus") as st:
        idx = EventIndex(st, tmp_path)
        assert idx.sync() == 1  # the nudge is read past, not kept
        assert idx.sync() == 0
        with open(log, "a") as f:  # gt in the middle of writing a line: left for next time
            f.write('{"type": "done", "actor": "a", "payload": {"bead": "x-1"}')
        assert idx.sync() == 0 and idx.actors_for_bead("x-1") == set()
        with open(log, "a") as f:
            f.write("}\n")
        assert idx.sync() == 1 and idx.actors_for_bead("x-1") == {"a"}
        assert [s["session"] for s in idx.session_starts("a")] == ["s1"]
        # A new log (rotated, replaced): indexed again from its start, nothing stale kept.
        log.unlink()
        _append(log, {"type": "session_start", "actor": "b", "payload": {"session_id": "s9"}})
        assert idx.sync() == 1
        assert idx.all_session_starts() == {"s9": {"actor": "b", "role": None, "cwd": None}}
    # The offset survives a reopen: a new processor does not read the log again.
    with Store.open(tmp_path / "corpus") as st:
        assert EventIndex(st, tmp_path).sync() == 0


def test_event_index_without_a_log(tmp_path):
    with Store.open(tmp_path / "corpus") as st:
        assert EventIndex(st, None).sync() == 0
        assert EventIndex(st, tmp_path).sync() == 0
        assert EventIndex(st, tmp_path).bead_span("a", "x") == (-1, 2**62)


def test_old_store_gains_the_model_column(tmp_path):
    import sqlite3

    db = tmp_path / "corpus" / "corpus.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE examples(id TEXT PRIMARY KEY, role TEXT, task TEXT, rig TEXT, bead TEXT, session TEXT, "
                "user TEXT, time TEXT, source TEXT NOT NULL, source_key TEXT NOT NULL, source_hash TEXT NOT NULL, "
                "outcome TEXT NOT NULL DEFAULT 'unknown', label TEXT NOT NULL DEFAULT 'neutral', status TEXT NOT NULL "
                "DEFAULT 'active', reason TEXT, findings TEXT NOT NULL DEFAULT '[]', messages TEXT, minhash TEXT, "
                "artifact_key TEXT, batch TEXT, grp TEXT, created REAL NOT NULL)")
    con.execute("INSERT INTO examples(id, source, source_key, source_hash, created) VALUES ('e1', 'curated', 'k', 'h', 1)")
    con.commit()
    con.close()
    with Store.open(db.parent) as st:
        [ex] = st.query()
        assert ex.id == "e1" and ex.model is None
    assert os.path.getsize(db) > 0
