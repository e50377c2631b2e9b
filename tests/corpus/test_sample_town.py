import collections
import json

from gt_ext.corpus.collect import process_spool, scan_transcripts
from gt_ext.corpus.overlap import check_no_overlap, eval_prompts, overlapping
from gt_ext.corpus.sample_town import generate, write_history
from gt_ext.corpus.spool import write_event
from gt_ext.corpus.store import Store
from gt_ext.corpus.tags import rig_from_actor
from gt_ext.roles import ROLES


def test_deterministic_by_seed_and_covers_roles():
    a, b, c = generate(5, witness=4, per_role=2), generate(5, witness=4, per_role=2), generate(6, witness=4, per_role=2)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [s.to_dict() for s in a] != [s.to_dict() for s in c]
    assert {s.role for s in a} == set(ROLES)
    outcomes = collections.Counter((s.role, s.outcome) for s in a)
    assert outcomes[("witness", "success")] and outcomes[("witness", "failure")]


def test_no_overlap_with_eval_prompts():
    texts = [m["content"] for s in generate(0) for m in s.messages]
    check_no_overlap(texts, eval_prompts(), what="sample town")


def test_overlap_helper_catches_copies():
    ev = ["polecat furiosa has been idle for thirty two minutes with work on its hook"]
    assert overlapping(["noise " + ev[0] + " more"], ev)
    assert overlapping(["a different sentence about polecats and hooks entirely here"], ev) == []


def test_written_history_goes_through_the_real_collection_path(tmp_path):
    sessions = generate(1, witness=2, per_role=1)
    town, projects = tmp_path / "town", tmp_path / "projects"
    (town / "mayor").mkdir(parents=True)
    (town / "mayor" / "town.json").write_text("{}")
    issues = write_history(sessions, town, projects)
    with Store.open(town / ".corpus") as st:
        for iss in issues:
            write_event(st.spool_dir, "bead_close", iss)
        rep = process_spool(st, town, projects)
        assert rep.errors == []
        scan_transcripts(st, projects)
        linked = [e for e in st.query(status=None) if e.bead]
        assert linked and all(e.role in ROLES for e in linked)
        # Every distinct conversation is stored exactly once (sessions with the same content are
        # one example by design), and nothing that was not generated is.
        stored = {e.session for e in st.query(status=None)}
        same_content = collections.defaultdict(set)
        for s in sessions:
            same_content[json.dumps(s.messages, sort_keys=True)].add(s.session)
        assert stored <= {s.session for s in sessions}
        assert [len(stored & group) for group in same_content.values()] == [1] * len(same_content)
        assert json.dumps([e.messages for e in st.query()]).count("<tool_call>") > 0


def test_scan_tags_sessions_from_town_events(tmp_path):
    sessions = generate(2, witness=2, per_role=1)
    town, projects = tmp_path / "town", tmp_path / "projects"
    (town / "mayor").mkdir(parents=True)
    (town / "mayor" / "town.json").write_text("{}")
    write_history(sessions, town, projects)
    with Store.open(town / ".corpus") as st:
        scan_transcripts(st, projects, town_root=town)
        by_session = {e.session: e for e in st.query(status=None)}
        for s in sessions:
            if s.session in by_session:
                assert by_session[s.session].role == s.role, s.session
                assert by_session[s.session].rig == rig_from_actor(s.user)


def test_each_attempt_gets_its_own_outcome_through_collection(tmp_path):
    """A bead closed "done" after a crashed first attempt: the crashed session is stored as a
    failure and the finishing one as a success (not both as the bead's success)."""
    sessions = generate(4, witness=3, per_role=1)
    town, projects = tmp_path / "town", tmp_path / "projects"
    (town / "mayor").mkdir(parents=True)
    (town / "mayor" / "town.json").write_text("{}")
    issues = write_history(sessions, town, projects)
    want = {s.session: s.outcome for s in sessions if s.bead}
    assert set(want.values()) == {"success", "failure"}
    with Store.open(town / ".corpus") as st:
        for iss in issues:
            write_event(st.spool_dir, "bead_close", iss)
        assert process_spool(st, town, projects).errors == []
        got = {e.session: e.outcome for e in st.query(status=None) if e.bead}
        by_session = {s.session: s for s in sessions}
        assert got and all(got[sid] == want[sid] for sid in got), {sid: (got[sid], want[sid]) for sid in got if got[sid] != want[sid]}
        # ...and each stored session is linked to the bead it worked, not to every bead of its actor.
        assert all(e.bead == by_session[e.session].bead for e in st.query(status=None) if e.bead)
        assert collections.Counter(got.values())["failure"] >= 3
