import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gt_ext.corpus.collect import add_files, capture_panes, process_spool, scan_transcripts
from gt_ext.corpus.spool import write_event
from gt_ext.corpus.store import Store
from tests.corpus.helpers import add_session_events, make_town_dirs, write_transcript

REPO = Path(__file__).resolve().parents[2]


def _town(tmp_path, n=3):
    town = make_town_dirs(tmp_path / "town")
    projects = tmp_path / "projects"
    issues = []
    for i in range(n):
        actor = f"demo/polecats/p{i}"
        cwd = str(town / actor)
        sid = f"sess-{i}"
        write_transcript(projects, sid, cwd, f"Run the bead on your hook (number {i}).",
                         [(f"Reading hook {i}.", "gt hook", f"dm-{i}: task {i} with key AKIAABCDEFGHIJKLMN{i:02d}"),
                          (f"Working step for {i}.", f"make test TARGET=t{i}", f"{i} passed")])
        add_session_events(town, actor, sid, cwd, f"dm-{i}")
        issues.append({"id": f"dm-{i}", "title": f"task {i}", "status": "closed", "close_reason": "done",
                       "issue_type": "task", "assignee": actor, "labels": ["task:git-workflow"]})
    return town, projects, issues


def _spool_via_hook(spool: Path, issue: dict) -> None:
    subprocess.run([str(REPO / "hooks" / "on_close"), issue["id"], "close"], input=json.dumps(issue).encode(),
                   env={"GT_EXT_SPOOL": str(spool), "PATH": os.environ["PATH"]}, check=True)


def test_bead_close_links_session_and_tags(tmp_path):
    town, projects, issues = _town(tmp_path, 2)
    with Store.open(town / ".corpus") as st:
        for iss in issues:
            _spool_via_hook(st.spool_dir, iss)
        rep = process_spool(st, town, projects)
        assert rep.errors == [] and rep.stored == {"active": 2}
        exs = st.query()
        assert {e.bead for e in exs} == {"dm-0", "dm-1"}
        for e in exs:
            assert e.role == "polecat" and e.rig == "demo" and e.task == "git-workflow"
            assert e.outcome == "success" and e.label == "good" and e.source == "claude-jsonl"
            assert "AKIAABCDEFGHIJKLMN" not in json.dumps(e.messages)
        assert list(st.spool_dir.glob("*.json")) == []
        # Processing again finds nothing to do.
        assert process_spool(st, town, projects).events == 0


def test_malformed_transcript_is_quarantined_and_the_rest_proceed(tmp_path):
    town, projects, issues = _town(tmp_path, 3)
    bad = next(projects.glob("*/sess-1.jsonl"))
    bad.write_text(bad.read_text() + '{"type": "assistant", "message": {"content": 42}}\n')
    with Store.open(town / ".corpus") as st:
        for iss in issues:
            write_event(st.spool_dir, "bead_close", iss, argv=[iss["id"], "close"])
        rep = process_spool(st, town, projects)
        assert len(rep.errors) == 1 and "sess-1.jsonl:" in rep.errors[0]
        assert st.count(status="active") == 2
        [q] = st.query(status="quarantined")
        assert q.messages is None and q.reason.startswith("parse error") and q.bead == "dm-1"


def test_killed_processing_reruns_without_loss_or_duplicates(tmp_path):
    town, projects, issues = _town(tmp_path, 6)
    store_dir = town / ".corpus"
    with Store.open(store_dir) as st:
        for iss in issues:
            write_event(st.spool_dir, "bead_close", iss)
    env = dict(os.environ, GT_EXT_CORPUS_CRASH_AFTER="3", GT_EXT_CORPUS=str(store_dir))
    cmd = [sys.executable, "-m", "gt_ext.cli", "corpus", "--town", str(town), "process", "--claude-dir", str(projects)]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert crashed.returncode == 137
    with Store.open(store_dir) as st:
        assert 0 < st.count() < 6
    env.pop("GT_EXT_CORPUS_CRASH_AFTER")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Store.open(store_dir) as st:
        assert st.count(status="active") == 6
        assert sorted(e.bead for e in st.query()) == [f"dm-{i}" for i in range(6)]
        assert list(st.spool_dir.glob("*.json")) == []


def test_stop_events_and_batch_scan_never_take_a_session_twice(tmp_path):
    town, projects, _ = _town(tmp_path, 2)
    with Store.open(town / ".corpus") as st:
        t0 = next(projects.glob("*/sess-0.jsonl"))
        for _ in range(3):  # Stop fires every turn
            write_event(st.spool_dir, "session_stop", {"session_id": "sess-0", "transcript_path": str(t0)},
                        env={"GT_ROLE": "polecat", "GT_RIG": "demo"})
        rep = process_spool(st, town, projects)
        assert rep.sessions == 1 and st.count() == 1
        rep = scan_transcripts(st, projects)
        assert st.count() == 2  # only sess-1 was new
        assert {e.session for e in st.query()} == {"sess-0", "sess-1"}


def test_add_curated_files(tmp_path):
    md = tmp_path / "ex.md"
    md.write_text("---\nrole: crew\ntask: bead-creation\n---\n## User\nFile a bead for the login bug.\n"
                  "## Assistant\nFiling it with bd create so it is tracked properly.\n")
    with Store.open(tmp_path / "c") as st:
        rep = add_files(st, [md], outcome="success")
        assert rep.stored == {"active": 1}
        e = st.query()[0]
        assert (e.role, e.task, e.source, e.label) == ("crew", "bead-creation", "markdown", "good")
        assert add_files(st, [md]).stored == {}


def test_capture_live_tmux_pane(tmp_path):
    import shutil
    import time as _t

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    sock = f"gtx-corpus-{os.getpid()}"
    script = tmp_path / "agent.sh"
    script.write_text("printf '> Patrol the demo rig now\\n● All polecats of demo are working; nothing to do.\\n'; sleep 60\n")
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-s", "dm-witness", "sh", str(script)], check=True)
    try:
        with Store.open(tmp_path / "c") as st:
            for _ in range(50):  # wait for the pane to show the text
                rep = capture_panes(st, ["dm-witness"], socket=sock)
                if rep.stored:
                    break
                _t.sleep(0.1)
            [e] = st.query()
            assert e.role == "witness" and e.source == "pane"
            assert e.messages[-1]["content"].startswith("All polecats of demo")
            assert capture_panes(st, ["dm-witness"], socket=sock).stored == {}  # unchanged pane: no-op
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def test_concurrent_processors_take_turns_and_lose_nothing(tmp_path):
    town, projects, issues = _town(tmp_path, 8)
    store_dir = town / ".corpus"
    with Store.open(store_dir) as st:
        for iss in issues:
            write_event(st.spool_dir, "bead_close", iss)
    env = dict(os.environ, GT_EXT_CORPUS=str(store_dir))
    cmd = [sys.executable, "-m", "gt_ext.cli", "corpus", "--town", str(town), "process", "--claude-dir", str(projects)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with Store.open(store_dir) as st:
        assert st.count() == 8 and len({e.bead for e in st.query()}) == 8


def test_errors_do_not_leak_user_names(tmp_path, monkeypatch):
    from gt_ext.corpus import collect

    projects = tmp_path / "projects"
    d = projects / "-w"
    d.mkdir(parents=True)
    bad = d / "s-x.jsonl"
    bad.write_text("{broken\n")
    # Make the parser report the path as it would on a real machine: under /home/<user>.
    real = collect.parse_claude_jsonl

    def parse(path):
        try:
            return real(path)
        except collect.GtExtError as e:
            raise collect.GtExtError(str(e).replace(str(tmp_path), "/home/wilhelmina")) from None

    monkeypatch.setattr(collect, "parse_claude_jsonl", parse)
    with Store.open(tmp_path / "c") as st:
        write_event(st.spool_dir, "session_stop", {"session_id": "s-x", "transcript_path": str(bad)})
        rep = process_spool(st, None, projects)
        assert len(rep.errors) == 1 and "<PATH:home>" in rep.errors[0] and "wilhelmina" not in rep.errors[0]
        [q] = st.query(status="quarantined")
        assert "wilhelmina" not in q.reason


# --- issue #20: paths from beads, session ids and hook payloads stay inside the transcript roots ---
def _outside_transcript(tmp_path, name="private"):
    """A readable file outside every transcript root, shaped like a transcript so it would parse."""
    return write_transcript(tmp_path / "elsewhere", name, "/srv/x", "Here are the deploy credentials.",
                            [("Reading the vault file.", "cat vault.txt", "OUTSIDE-ROOT-CONTENT")])


def test_bead_metadata_transcript_path_outside_the_roots_is_ignored(tmp_path):
    town, projects, _ = _town(tmp_path, 0)
    outside = _outside_transcript(tmp_path)
    issue = {"id": "dm-9", "status": "closed", "close_reason": "done", "assignee": "demo/polecats/p9",
             "metadata": {"session_id": "nosuch", "transcript_path": str(outside)}}
    with Store.open(town / ".corpus") as st:
        _spool_via_hook(st.spool_dir, issue)
        process_spool(st, town, projects)
        assert st.count() == 0
        assert "OUTSIDE-ROOT-CONTENT" not in json.dumps([e.messages for e in st.query(status=None)])


def test_bead_metadata_transcript_path_inside_the_roots_is_taken(tmp_path):
    town, projects, _ = _town(tmp_path, 0)
    inside = write_transcript(projects, "any-name", "/srv/y", "Run the bead on your hook.",
                              [("Reading the hook.", "gt hook", "dm-8: fix the login page")])
    issue = {"id": "dm-8", "status": "closed", "close_reason": "done", "assignee": "demo/polecats/p8",
             "metadata": {"session_id": "s-8", "transcript_path": str(inside)}}
    with Store.open(town / ".corpus") as st:
        _spool_via_hook(st.spool_dir, issue)
        process_spool(st, town, projects)
        assert [e.bead for e in st.query()] == ["dm-8"]


@pytest.mark.parametrize("sid", ["../../elsewhere/-srv-x/private", "../elsewhere/*/private", "/abs/private"])
def test_session_ids_that_walk_out_of_the_roots_find_nothing(tmp_path, sid):
    town, projects, _ = _town(tmp_path, 0)
    _outside_transcript(tmp_path)
    (projects / "p").mkdir(parents=True)
    with Store.open(town / ".corpus") as st:
        _spool_via_hook(st.spool_dir, {"id": "dm-7", "status": "closed", "assignee": "demo/polecats/p7",
                                       "metadata": {"session_id": sid}})
        write_event(st.spool_dir, "session_stop", {"session_id": sid})
        process_spool(st, town, projects)
        assert st.count() == 0


def test_stop_event_transcript_path_outside_the_roots_is_refused(tmp_path):
    town, projects, _ = _town(tmp_path, 1)
    outside = _outside_transcript(tmp_path)
    with Store.open(town / ".corpus") as st:
        write_event(st.spool_dir, "session_stop", {"session_id": "sess-x", "transcript_path": str(outside)})
        rep = process_spool(st, town, projects)
        assert st.count() == 0 and len(rep.errors) == 1 and "transcript roots" in rep.errors[0]


def test_a_symlink_in_the_projects_folder_does_not_lead_out(tmp_path):
    town, projects, _ = _town(tmp_path, 1)
    outside = _outside_transcript(tmp_path)
    link = projects / "-srv-z" / "linked.jsonl"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    with Store.open(town / ".corpus") as st:
        scan_transcripts(st, projects)
        write_event(st.spool_dir, "session_stop", {"session_id": "linked"})
        process_spool(st, town, projects)
        assert {e.session for e in st.query(status=None)} == {"sess-0"}


def test_a_batch_killed_midway_is_still_judged_and_not_exported_before(tmp_path):
    """Issue #20: kill -9 during `corpus process` let a batch skip the anomaly gate on rerun."""
    from gt_ext.corpus.ingest import Ingestor, Source, Tags
    from gt_ext.corpus.scrub import Scrubber
    from gt_ext.corpus.shards import write_shards

    town = make_town_dirs(tmp_path / "town")
    projects = tmp_path / "projects"
    store_dir = town / ".corpus"
    with Store.open(store_dir) as st:  # a corpus of 60 ordinary sessions
        ing = Ingestor(st, scrubber=Scrubber(extra_usernames=()))
        with st.tx():
            for i in range(60):
                ing.ingest([{"role": "user", "content": f"Check the polecats of rig demo, round {i}."},
                            {"role": "assistant", "content": f"Round {i}: every polecat is working, nothing to do."}],
                           Tags(role="witness", outcome="success"), Source("curated", f"base{i}", f"h{i}"))
        assert ing.finish() == []
        for i in range(7):  # then a batch in which every session force-pushes
            actor, sid = f"demo/polecats/f{i}", f"force-{i}"
            write_transcript(projects, sid, str(town / actor), f"Ship change {i} to main.",
                             [(f"Pushing change {i}.", f"git push --force origin main  # change {i}", "forced update")])
            add_session_events(town, actor, sid, str(town / actor), f"dm-{i}")
            write_event(st.spool_dir, "bead_close", {"id": f"dm-{i}", "status": "closed", "close_reason": "done",
                                                     "assignee": actor})
    env = dict(os.environ, GT_EXT_CORPUS_CRASH_AFTER="6", GT_EXT_CORPUS=str(store_dir))
    cmd = [sys.executable, "-m", "gt_ext.cli", "corpus", "--town", str(town), "process", "--claude-dir", str(projects)]
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).returncode == 137  # SIGKILL-like exit
    with Store.open(store_dir) as st:
        assert st.count(label="bad") == 6  # six sessions stored, their batch never judged
        m = write_shards(st, tmp_path / "exp", all_rigs=True, val_pct=0)  # and not exported meanwhile
        assert "force-" not in "".join(p.read_text() for p in (tmp_path / "exp").rglob("*.jsonl"))
        assert m["counts"]["sft"]["witness"]
    env.pop("GT_EXT_CORPUS_CRASH_AFTER")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Store.open(store_dir) as st:
        killed = [e for e in st.query(status=None) if (e.session or "").startswith("force-") and e.session != "force-6"]
        assert len(killed) == 6 and {e.status for e in killed} == {"review"}
        assert all(e.reason.startswith("batch anomaly: violation_rate") for e in killed)
        assert st.db.execute("SELECT COUNT(*) FROM open_batches").fetchone()[0] == 0
