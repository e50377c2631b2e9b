"""Formula patrol decisions: the step catalog, staging with the real tools, labels, prompts."""

import json
import random
import time

import pytest

from gt_ext.corpus.patrol import build, stage
from gt_ext.corpus.patrol.steps import ROLES, STEPS, steps_for


def test_every_step_is_staged_and_its_situations_name_its_actions():
    assert set(stage.SCENARIOS) == {s.key for s in STEPS}
    for s in STEPS:
        ids = {a.id for a in s.actions}
        situations = stage.SCENARIOS[s.key][3]
        assert set(situations.values()) == ids, s.key  # every allowed action is some situation's answer
        assert "action" in s.fields and "reason" in s.fields
        assert sum(a.noop for a in s.actions) <= 1


def test_schedule_stages_every_action_equally_often_and_every_situation():
    from collections import Counter

    assert build.schedule({"zombie": "warrant", "recent": "none", "working": "none", "idle": "none"}) == [
        "zombie", "zombie", "zombie", "recent", "working", "idle"]
    for s in STEPS:
        situations = stage.SCENARIOS[s.key][3]
        sched = build.schedule(situations)
        per_action = Counter(situations[x] for x in sched)
        assert len(set(per_action.values())) == 1, (s.key, per_action)  # a constant answer scores 1/|actions|
        assert set(sched) == set(situations), s.key  # no situation dropped


def test_reworded_names_never_appear_in_training():
    for s in STEPS:
        train = {n for a in s.actions for n in a.names}
        assert not train & {a.heldout for a in s.actions}, s.key
        assert len(train) == sum(len(a.names) for a in s.actions), f"{s.key}: a name lists two actions"


def test_fresh_names_are_no_steps_name_and_list_every_action_once():
    every = {n for s in STEPS for a in s.actions for n in (*a.names, a.heldout)}
    pool = build.fresh_names()
    assert len(pool) == len(set(pool)) >= 100 and not every & set(pool)
    r = random.Random(3)
    for s in STEPS:
        acts = build.allowed(s, "fresh", r)
        assert sorted(a for a, _, _ in acts) == sorted(a.id for a in s.actions)
        assert len({n for _, n, _ in acts}) == len(acts) and {n for _, n, _ in acts} <= set(pool)
        assert {rule for _, _, rule in acts} == {a.rule for a in s.actions}
    with pytest.raises(ValueError, match="unknown wording"):
        build.allowed(STEPS[0], "heldout", r)


def _names(keys: tuple[str, ...]) -> set[str]:
    """Every name a town puts in evidence: polecats, dogs, rig, bead prefix, plugins, module, function."""
    out: set[str] = set()
    for k in keys:
        lay = stage.LAYOUTS[k]
        out |= {*lay.polecats, *lay.dogs, lay.rig, lay.prefix, *(p for p, _ in lay.plugins), *lay.code}
    return out


def test_held_out_layouts_share_no_names_with_training():
    assert not _names(stage.TRAIN_LAYOUTS) & _names(stage.HELDOUT_LAYOUTS)
    assert set(stage.TRAIN_LAYOUTS) | set(stage.HELDOUT_LAYOUTS) == set(stage.LAYOUTS)


def test_training_towns_each_bring_their_own_names():
    """Names vary over the training towns: no polecat, rig or prefix is shared by two of them."""
    for field in ("polecats", "rig", "prefix"):
        seen: list[str] = []
        for k in stage.TRAIN_LAYOUTS:
            v = getattr(stage.LAYOUTS[k], field)
            seen += list(v) if isinstance(v, tuple) else [v]
        assert len(seen) == len(set(seen)), field


def test_training_cases_get_fresh_polecat_names_held_out_towns_keep_theirs():
    r = random.Random(0)
    drawn = [stage.staged_layout(stage.LAYOUTS[k], r).polecats for k in stage.TRAIN_LAYOUTS * 20]
    names = {n for d in drawn for n in d}
    assert all(len(set(d)) == len(d) == 4 for d in drawn)
    assert len(names) > 200 and not names & _names(tuple(stage.LAYOUTS))
    # no name carries a word a rule reads (a mail from `zoom` would read as an out-of-memory report)
    assert not [n for n in names if any(w in n for ws, _, _ in stage.ROUTES for w in ws)]
    for k in stage.HELDOUT_LAYOUTS:
        assert stage.staged_layout(stage.LAYOUTS[k], r) is stage.LAYOUTS[k]


def test_prompt_lists_actions_in_the_wording_it_is_given():
    st = steps_for("witness")[0]
    case = {"step": st.key, "layout": "r", "evidence": "$ tmux ls\nno server running", "label": {}}
    acts = build.allowed(st, "reworded", random.Random(0))
    text = build.join_prompt(build.prompt_vars(case, acts))
    assert [a for a, _, _ in acts] == [a.id for a in reversed(st.actions)]
    for a in st.actions:
        assert f"- {a.heldout}: {a.reworded}" in text
    assert "Formula mol-witness-patrol, step survey-workers" in text and "rig docsite" in text


def test_answer_keeps_the_steps_field_order_and_the_listed_name():
    st = next(s for s in STEPS if s.id == "process-cleanups")
    label = {"action": "commit", "target": "nux", "preserve": True, "reason": "uncommitted changes"}
    out = json.loads(build.answer(st, label, {"commit": "save-work"}))
    assert list(out) == ["target", "reason", "preserve", "action"] and out["action"] == "save-work"
    wrong = build.misreading(st, label, random.Random(1))
    assert wrong["action"] != "commit" and wrong["reason"] == st.action(wrong["action"]).rule.split(":")[0].split(",")[0][:60]


@pytest.mark.integration
@pytest.mark.parametrize("key", ["witness/process-cleanups", "refinery/merge-push", "dog/cleanup"])
def test_staged_evidence_reads_as_the_situation_it_stages(key, bd_bin, dolt_bin, tmp_path, monkeypatch):
    """Real bd/git/tmux/dolt output for every situation of the step; the formula's rule applied to
    that output gives the situation's action."""
    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path / "home"))
    cases = build.stage_family(key, "a", reps=1)
    want = stage.SCENARIOS[key][3]
    assert {c["situation"]: c["label"]["action"] for c in cases} == want
    for c in cases:
        assert c["evidence"].startswith("$ ") or c["evidence"].startswith("Config:")
        assert "gt-scratch-" not in c["evidence"] and "gt-stage-" not in c["evidence"]


def test_sessions_pair_each_decision_with_a_misreading(monkeypatch, tmp_path):
    """Training sessions come from the training families only, success and failure share the prompt."""
    seen = []

    def fake_evidence(role, layouts, reps, seed=0, progress=False):
        seen.append(layouts)
        st = steps_for(role)[0]
        return [{"step": st.key, "family": f"{st.key}@a", "layout": "a", "situation": "x", "rep": 0,
                 "evidence": "$ date -u +%H:%M\n10:00", "label": {"action": st.actions[0].id, "target": "nux",
                                                                 "reason": "r"}}]

    monkeypatch.setattr(build, "evidence", fake_evidence)
    made = build.sessions("deacon", reps=1, prompts_per_case=2)
    assert seen == [stage.TRAIN_LAYOUTS] and len(made) == 4
    fail, ok = made[0], made[1]
    assert (fail.outcome, ok.outcome) == ("failure", "success")
    assert fail.messages[0] == ok.messages[0] and fail.messages[1] != ok.messages[1]
    assert {s.role for s in made} == {"deacon"} and set(ROLES) >= {"deacon"}


def test_sessions_answer_with_the_name_the_prompt_lists_fresh_or_not(monkeypatch):
    """A share of training prompts lists the actions under fresh names; every answer's action is
    the name its own prompt lists on the line of the labelled action's rule."""
    st = steps_for("dog")[0]
    label = {"action": st.actions[1].id, "target": "x", "reason": "r"}
    monkeypatch.setattr(build, "evidence", lambda *a, **k: [
        {"step": st.key, "family": f"{st.key}@a", "layout": "a", "situation": "x", "rep": 0,
         "evidence": "$ bd list\nnothing", "label": label}])
    made = [s for s in build.sessions("dog", reps=1, prompts_per_case=60) if s.outcome == "success"]
    pool, fresh = set(build.fresh_names()), 0
    for s in made:
        name = json.loads(s.messages[1]["content"])["action"]
        assert f"- {name}: {st.action(label['action']).rule}" in s.messages[0]["content"]
        fresh += name in pool
    assert 10 <= fresh <= 30  # about FRESH_SHARE of 60


@pytest.mark.parametrize("mail", ["MAIL", "MAIL_ALT", "MAIL_HELDOUT"])
def test_every_inbox_wording_routes_as_its_situation(mail):
    """Each wording of each witness inbox situation, read by the formula's routing rule, gives that
    situation's action (a wording whose trigger words route elsewhere would mislabel training)."""
    want = stage.SCENARIOS["witness/inbox-check"][3]
    fill = {"n": "nux", "b": "wa-k12", "p": "wa", "k": 42}
    for sit, (subj, body) in getattr(stage, mail).items():
        line = f"wa-wisp-1 [from:webapp/polecats/nux] {subj.format(**fill)}\n{body.format(**fill)}"
        facts = stage.facts_inbox_check(f"$ bd list --type message\n{line}", stage.LAYOUTS["a"])
        assert stage.decide_inbox_check(facts)["action"] == want[sit], (mail, sit)


def test_training_mail_has_two_wordings_that_differ():
    assert set(stage.MAIL) == set(stage.MAIL_ALT) == set(stage.MAIL_HELDOUT)
    assert all(stage.MAIL[k][1] != stage.MAIL_ALT[k][1] for k in stage.MAIL)


SURVEY_EVIDENCE = """$ date -u +%H:%M
10:40
$ bd list --all --json | jq -r '.[] | [.id, .issue_type, .status, .assignee] | @tsv'
wa-1	task	in_progress	webapp/polecats/nux
wa-2	task	hooked	webapp/polecats/slit
wa-3	task	closed	webapp/polecats/toast
$ tmux ls -F '#{session_name} #{pane_current_command}'
wa-nux bash
wa-toast claude
$ ls polecats/
nux
toast
$ ls -l --time-style=+%H:%M logs/ | awk 'NR>1 {print $6, $7}'
09:05 wa-nux.log
10:38 wa-slit.log
10:39 wa-toast.log"""


def test_reading_quotes_the_facts_the_rule_reads():
    """The answer's `evidence` is what the tools printed, per polecat, in their order: the exited
    agent, the orphan (no session, no folder) and the closed bead, with each log's quiet minutes."""
    case = {"step": "witness/survey-workers", "layout": "a", "evidence": SURVEY_EVIDENCE}
    assert build.reading(case) == "nux wa-1 no agent quiet 95m; slit wa-2 no session no dir quiet 2m; toast closed"
    st = steps_for("witness")[0]
    out = json.loads(build.answer(st, stage.label(st.key, SURVEY_EVIDENCE, stage.LAYOUTS["a"]),
                                  {a.id: a.id for a in st.actions}, build.reading(case)))
    assert list(out) == ["evidence", "target", "reason", "action"] and out["action"] == "restart"
    mail = {"step": "witness/inbox-check", "layout": "a",
            "evidence": "$ bd list --type message\nwa-wisp-1 [from:webapp/polecats/nux] HELP: nux oom\nBuild killed, oom."}
    assert build.reading(mail) == "HELP from nux: 'oom'"
    wisp = {"step": "witness/process-cleanups", "layout": "a", "evidence": (
        "$ bd list --label cleanup --status open --json | jq -r '.[] | [.id, .title] | @tsv'\nwa-9\tcleanup: nux\n"
        "$ cd polecats/nux && git status --short --branch\n## polecat/nux-1...origin/polecat/nux-1 [ahead 2]\n M a.py\n"
        "$ cd polecats/nux && git stash list\n$ cd polecats/nux && git log --oneline @{u}..HEAD 2>&1 | head -5\nabc123 x")}
    assert build.reading(wisp) == "nux: branch [ahead 2]; 1 changed; stash empty; unpushed yes"
    zombie = {"step": "deacon/zombie-scan", "layout": "a", "evidence": (
        "$ date -u +%H:%M\n10:30\n$ bd list --all --json | jq -r '.[] | [.id, .status, .assignee] | @tsv'\n"
        "wa-1\tclosed\twebapp/polecats/nux\nwa-2\thooked\twebapp/polecats/slit\n$ tmux ls -F '#{session_name}'\nwa-slit\n"
        "$ ls -l --time-style=+%H:%M logs/ | awk 'NR>1 {print $6, $7}'\n09:00 wa-nux.log\n10:28 wa-slit.log")}
    assert build.reading(zombie) == "nux no session, no work, quiet 90m; slit session, work, quiet 2m"
    assert stage.label("deacon/zombie-scan", zombie["evidence"], stage.LAYOUTS["a"])["target"] == "nux"
    dbs = {"step": "dog/cleanup", "layout": "a", "evidence": (
        "Config: max_orphans_for_sql = 2\n$ cd .dolt-data && dolt sql -q 'SHOW DATABASES'\n| hq |\n| testdb_1 |\n"
        "| beads_t9 |\n| doctest_3 |")}
    assert build.reading(dbs) == "3 orphan databases, max_orphans_for_sql 2"
    failing = {"step": "refinery/handle-failures", "layout": "a", "evidence": (
        "$ bd show wa-7 --json | jq -r '.[0] | [.id, .title, .assignee] | @tsv'\n"
        "wa-7\tMR polecat/nux/wa-12\twebapp/polecats/nux\n"
        "$ cd webapp/refinery/rig && git checkout -q temp && python -m pytest -q -p no:cacheprovider 2>&1 | tail -2\n"
        "FAILED test_calc.py::test_total - assert 4 == 3\n1 failed, 1 passed in 0.02s\n"
        "$ cd webapp/refinery/rig && git checkout -q main && python -m pytest -q -p no:cacheprovider 2>&1 | tail -2\n"
        "2 passed in 0.01s\n$ bd search total --status open --json | jq -r '.[] | [.id, .title] | @tsv'\n")}
    # the polecat comes first: a fix-needed decision targets it, so the reading must carry its name
    assert build.reading(failing) == "nux: branch failed test_total; main passed; open bug none"
    assert stage.label("refinery/handle-failures", failing["evidence"], stage.LAYOUTS["a"])["target"] == "nux"
    assert build.reading({"step": "unknown/step", "layout": "a", "evidence": ""}) == ""


STOPPED_STAGING = """
import time
from gt_ext.corpus.patrol import build, stage

def slow(t, lay, sit, r):
    print("staging", flush=True)
    time.sleep(120)
    return ""

stage.SCENARIOS["dog/cleanup"] = (slow,) + stage.SCENARIOS["dog/cleanup"][1:]
build.evidence("dog", ("a",), 1)
"""


def _group_alive(pgid: int) -> bool:
    import os

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
def test_a_stopped_staging_run_leaves_no_scratch_town(bd_bin, tmp_path):
    """SIGTERM to a staging run's process group (a stopped bench, `kill`) closes each worker's
    scratch town: no folder left in the temp dir, no half-written family in the cache."""
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, TMPDIR=str(tmp_path), GT_EXT_CACHE=str(tmp_path / "cache"), GT_EXT_PATROL_WORKERS="3")
    p = subprocess.Popen([sys.executable, "-c", STOPPED_STAGING], env=env, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "staging"  # the worker is inside its scratch town
        assert list(tmp_path.glob("gt-stage-*/gt-scratch-*"))
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=60)
        deadline = time.monotonic() + 30  # the worker closes its town after the parent is gone
        while list(tmp_path.glob("gt-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        while _group_alive(p.pid) and time.monotonic() < deadline:  # the workers end, none waits on
            time.sleep(0.2)  # the next task of a parent that is gone
    finally:
        leaked = _group_alive(p.pid)
        if p.poll() is None or leaked:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0
    assert not leaked, "a staging worker outlived the stopped run"
    assert not list(tmp_path.glob("gt-*"))
    assert not list((tmp_path / "cache").rglob("dog__cleanup@*.json"))  # the stopped family: re-staged next run
