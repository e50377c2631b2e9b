"""The boot, mayor and crew suites: every task can be passed by a right answer, and fails on a wrong
one (so no task passes anything), graded through the real runner (node runs the JS checks)."""

from __future__ import annotations

import json

import pytest

from gt_ext.evals import jsrun, runner
from gt_ext.evals import suite as suite_mod

pytestmark = pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")

BOOT_CMD = {"nudge": "gt nudge --mode=queue deacon 'Boot check-in: pending work'",
            "wake": "gt nudge deacon 'Boot wake: check your inbox'", "start": "gt deacon start",
            "interrupt": "gt mail send deacon -s 'INTERRUPT: stuck' -m 'same error for 12 min'"}


def _plan(beads):
    return json.dumps({"beads": [dict(zip(("id", "title", "type", "parent", "needs", "rig"), b, strict=True))
                                 for b in beads]})


E = "e"
MAYOR = {
    "m-plan-epic-01": _plan([(E, "single sign-on", "epic", None, [], "webapp"),
                             ("a", "OIDC login flow", "task", E, [], "webapp"), ("b", "session store", "task", E, [], "webapp"),
                             ("c", "logout endpoint", "task", E, [], "webapp"), ("d", "tests", "task", E, ["a", "b", "c"], "webapp")]),
    "m-plan-epic-02": _plan([(E, "docsite refresh", "epic", None, [], "docsite"), ("a", "landing page", "task", E, [], "docsite"),
                             ("b", "search box", "task", E, [], "docsite"), ("c", "changelog page", "task", E, [], "docsite"),
                             ("d", "link check run", "task", E, ["a", "b", "c"], "docsite")]),
    "m-plan-epic-03": _plan([(E, "retire v1", "epic", None, [], "webapp"), ("a", "deprecation headers", "task", E, [], "webapp"),
                             ("b", "move internal callers", "task", E, [], "webapp"), ("c", "delete v1", "task", E, ["a", "b"], "webapp")]),
    "m-plan-cross-rig-01": _plan([("a", "region column in schema", "task", None, [], "datapipe"),
                                  ("b", "region API endpoint", "task", None, ["a"], "webapp"),
                                  ("c", "revenue chart", "feature", None, ["b"], "webapp")]),
    "m-plan-cross-rig-02": _plan([("a", "ETL currency field", "task", None, [], "datapipe"),
                                  ("b", "document currency", "task", None, ["a"], "docsite")]),
    "m-plan-cross-rig-03": _plan([("a", "migration client to account", "task", None, [], "datapipe"),
                                  ("b", "update queries", "task", None, ["a"], "webapp"),
                                  ("c", "glossary page", "task", None, ["a"], "docsite")]),
    "m-plan-parallel-01": _plan([(str(i), t, "bug", None, [], "webapp") for i, t in
                                 enumerate(["pricing typo", "favicon", "invoice date", "alt text", "copyright year"])]),
    "m-plan-parallel-02": _plan([("a", "backups how-to", "task", None, [], "docsite"), ("b", "upgrades how-to", "task", None, [], "docsite"),
                                 ("c", "monitoring how-to", "task", None, [], "docsite"),
                                 ("d", "overview page", "task", None, ["a", "b", "c"], "docsite")]),
    "m-plan-phases-01": _plan([("a", "phase 1 events table", "task", None, [], "webapp"),
                               ("b", "phase 2 dashboard", "task", None, ["a"], "webapp"),
                               ("c", "phase 3 drop old reader", "task", None, ["b"], "webapp")]),
    "m-plan-phases-02": _plan([("a", "feature flag", "task", None, [], "webapp"), ("b", "build new checkout", "feature", None, ["a"], "webapp"),
                               ("c", "remove old checkout", "task", None, ["b"], "webapp")]),
    "m-sling-owner-01": "gt sling wa-x71 webapp",
    "m-sling-owner-02": "gt sling dp-q40 datapipe",
    "m-sling-owner-03": "gt sling ds-m2e docsite",
    "m-file-sling-01": "bd create 'Password reset email sender' --type bug --rig webapp\ngt sling wa-n1 webapp",
    "m-file-sling-02": "bd create 'ETL retries forever on 401' --rig datapipe\ngt sling dp-n2 datapipe",
    "m-file-sling-03": "bd create 'Dark-mode toggle in header' --rig docsite\ngt sling ds-n3 docsite",
    "m-sling-docked-01": "gt rig undock docsite\ngt rig start docsite\ngt sling ds-t9y docsite",
    "m-sling-docked-02": "gt rig undock datapipe\ngt rig start datapipe\ngt sling dp-h22 datapipe",
    "m-no-spawn-01": "gt sling wa-b03 webapp",
    "m-no-spawn-02": "gt sling dp-k88 datapipe",
    "m-dep-01": "bd dep add wa-c12 wa-c10",
    "m-dep-02": "bd dep add dp-r07 dp-r05",
    "m-dep-03": "bd dep add ds-n40 wa-n39",
    "m-close-01": "bd close hq-a55",
    "m-close-02": "bd close hq-f02 --reason 'all rigs upgraded'",
    "m-file-where-01": "bd create 'Loader writes duplicate rows' --type bug --rig datapipe",
    "m-file-where-02": "bd create 'API reference 404' --type bug --rig docsite",
    "m-file-where-03": "bd create 'Coordinate next week release'",
    "m-convoy-01": "gt convoy create 'q3 data export' wa-d01 wa-d02 dp-d03",
    "m-convoy-02": "gt convoy create 'docs refresh' ds-e10 ds-e11",
    "m-nudge-01": "gt nudge webapp/witness 'wa-x71 has priority now'",
    "m-nudge-02": "gt nudge datapipe/crew/max 'schema review is ready'",
    "m-stuck-refinery-01": "gt nudge --mode=immediate webapp/refinery 'Process MQ'",
    "m-stuck-refinery-02": "gt nudge --mode=immediate datapipe/refinery 'Process MQ'",
    "m-park-dock-01": "gt rig park datapipe",
    "m-park-dock-02": "gt rig dock docsite",
    "m-nuke-01": "gt polecat nuke webapp/toast --force",
    "m-nuke-02": "gt polecat nuke datapipe/ace --force",
    "m-remember-01": "gt remember --type feedback 'always put the rig name in convoy titles'",
    "m-remember-02": "gt remember --type feedback 'never sling to docsite on Fridays'",
}
CREW = {
    "c-sling-rig-01": "bd new --type=bug 'cart double-counts coupons'\ngt sling wa-q1 webapp",
    "c-sling-rig-02": "gt sling wa-u18 webapp",
    "c-sling-rig-03": "gt sling wa-g07 webapp\ngt sling wa-g08 webapp",
    "c-no-self-sling-01": "gt sling wa-v55 webapp",
    "c-no-self-sling-02": "gt sling wa-v60 webapp",
    "c-sling-crew-01": "gt sling wa-y12 webapp --crew mel",
    "c-sling-crew-02": "gt sling dp-y30 datapipe --crew joe",
    "c-file-elsewhere-01": "bd create 'ETL timestamps in local time' --type bug --rig datapipe\ngt sling dp-z1 datapipe",
    "c-file-elsewhere-02": "bd create 'Docs describe a removed option' --rig docsite\ngt sling ds-z2 docsite",
    "c-push-main-01": "git push",
    "c-push-main-02": "git add README.md\ngit commit -m 'Update README'\ngit push",
    "c-push-rejected-01": "git pull --rebase\ngit push",
    "c-push-rejected-02": "git pull --rebase\ngit push",
    "c-push-rejected-03": "git pull --rebase && git push",
    "c-no-pr-01": "git push",
    "c-no-pr-02": "git push origin main",
    "c-coauthor-01": "git commit -m 'Rework PR #412' -m 'Co-Authored-By: Lena Ortiz <lena@example.org>'\ngit push",
    "c-coauthor-02": "git commit -m 'Add PR #77' -m 'Co-Authored-By: Arjun Rao <arjun@example.net>'",
    "c-worktree-01": "gt worktree datapipe",
    "c-worktree-02": "gt worktree remove docsite",
    "c-file-bug-01": "bd new --type=bug 'search ignores accents'",
    "c-file-bug-02": "bd create 'empty report export crashes' --type bug",
    "c-dep-01": "bd dep add wa-k21 wa-k20",
    "c-dep-02": "bd dep add wa-p02 wa-p01",
    "c-close-01": "bd close wa-h44",
    "c-close-02": "bd close wa-h50 --reason 'duplicate of wa-h12'",
    "c-finish-01": "git push\ngt handoff",
    "c-finish-02": "git push\ngt handoff -m 'feature landed'",
    "c-review-01": "gh pr view 88\ngh pr diff 88",
    "c-review-02": "gh pr diff 91",
    "c-message-01": "gt nudge webapp/polecats/nux 'spec changed: read the new description'",
    "c-message-02": "gt nudge webapp/witness 'slit runs a long build'",
    "c-plan-epic-01": _plan([(E, "report export", "epic", None, [], "webapp"), ("s", "export service", "task", E, [], "webapp"),
                             ("c", "CSV writer", "task", E, ["s"], "webapp"), ("x", "Excel writer", "task", E, ["s"], "webapp"),
                             ("b", "download button", "task", E, ["c", "x"], "webapp")]),
    "c-plan-epic-02": _plan([(E, "accessibility pass", "epic", None, [], "webapp"), ("a", "contrast fixes", "task", E, [], "webapp"),
                             ("b", "keyboard navigation", "task", E, [], "webapp"), ("c", "screen-reader labels", "task", E, [], "webapp")]),
    "c-plan-order-01": _plan([("t", "payments table", "task", None, [], "datapipe"), ("s", "SDK bump", "task", None, [], "webapp"),
                              ("w", "rewrite webhook handler", "task", None, ["s", "t"], "webapp"),
                              ("d", "delete old handler", "task", None, ["w"], "webapp")]),
    "c-plan-order-02": _plan([("m", "measure traffic", "task", None, [], "webapp"), ("p", "pick limits", "task", None, ["m"], "webapp"),
                              ("e", "enforce limits", "task", None, ["p"], "webapp"), ("d", "limits doc page", "task", None, ["p"], "docsite")]),
}


def _boot_answer(task, right: bool) -> str:
    v = task.test.vars
    actions = ["nothing", "nudge", "wake", "interrupt", "start", "archive", "keep"]
    act = v["expect"].split("|")[0] if right else next(a for a in actions if a not in v["expect"].split("|")
                                                        and (a in ("archive", "keep")) == (v.get("kind") == "inbox"))
    out = {"action": act, "reason": "r"}
    if v.get("kind") == "act":
        out["command"] = BOOT_CMD.get(act, "gt deacon status") if right else "tmux kill-session -t hq-deacon"
    return f"Decision:\n```json\n{json.dumps(out)}\n```"


def _score(role, answer):
    st = suite_mod.load(f"builtin:{role}")
    by_prompt = {t.rendered(): t for t in st.tasks}
    res = runner.evaluate("base:tiny-llama", st, write=False,
                          generate=lambda b, p: [answer(by_prompt[m[-1]["content"]]) for m in b])
    return res


@pytest.mark.parametrize("role", ["boot", "mayor", "crew"])
def test_right_answers_pass_every_task_and_wrong_ones_none(role):
    if role == "boot":
        right, wrong = (lambda t: _boot_answer(t, True)), (lambda t: _boot_answer(t, False))
    else:
        table = MAYOR if role == "mayor" else CREW
        st = suite_mod.load(f"builtin:{role}")
        assert set(table) == {t.id for t in st.tasks}
        right, wrong = (lambda t: table[t.id]), (lambda t: "echo done")
    res = _score(role, right)
    assert res.composite == 100.0, [(t.id, t.samples[0].reason) for t in res.tasks if not t.passed]
    assert set(res.splits) == {"dev", "heldout"} and res.splits["heldout"]["composite"] == 100.0
    res = _score(role, wrong)
    assert res.composite == 0.0, [t.id for t in res.tasks if t.passed]


def test_mayor_plan_rules_catch_what_they_name():
    st = suite_mod.load("builtin:mayor")
    task = next(t for t in st.tasks if t.id == "m-plan-cross-rig-01")
    good = json.loads(MAYOR[task.id])
    assert task.grade(json.dumps(good)).passed
    wrong_rig = json.loads(MAYOR[task.id])
    wrong_rig["beads"][0]["rig"] = "webapp"
    assert "filed in webapp, not datapipe" in task.grade(json.dumps(wrong_rig)).reason
    backwards = json.loads(MAYOR[task.id])  # temporal reading: the column "needs" the endpoint
    backwards["beads"][0]["needs"], backwards["beads"][1]["needs"] = ["b"], []
    assert "not respected" in task.grade(json.dumps(backwards)).reason
    cycle = json.loads(MAYOR[task.id])
    cycle["beads"][0]["needs"] = ["c"]
    assert "cycle" in task.grade(json.dumps(cycle)).reason
    epic = next(t for t in st.tasks if t.id == "m-plan-epic-01")
    orphan = json.loads(MAYOR[epic.id])
    orphan["beads"][2]["parent"] = None
    assert "not a child of the epic" in epic.grade(json.dumps(orphan)).reason
