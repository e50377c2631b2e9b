"""A generated patrol suite: rendering equals the training prompt, guard scope, grading, report."""

import json

import pytest

from gt_ext.corpus.patrol import build
from gt_ext.corpus.patrol.steps import steps_for
from gt_ext.evals import runner
from gt_ext.evals import suite as suite_mod


@pytest.fixture
def dog_suite(tmp_path, monkeypatch):
    def fake_evidence(role, layouts, reps, seed=0, progress=False):
        out = []
        for lay in layouts:
            for st in steps_for(role):
                for a in st.actions:
                    out.append({"step": st.key, "family": f"{st.key}@{lay}", "layout": lay, "situation": a.id,
                                "rep": 0, "evidence": f"$ tmux ls\nsituation {a.id} in {lay}",
                                "label": {"action": a.id, "target": "nux" if a.id != "escalate" else "",
                                          "preserve": a.id == "recover", "urgency": "low", "reason": "r"}})
        return out

    monkeypatch.setattr(build, "evidence", fake_evidence)
    n = build.write_suite("dog", tmp_path / "dog-patrol")
    return suite_mod.load(tmp_path / "dog-patrol"), n


def test_suite_renders_the_training_prompt_and_guards_only_tool_output(dog_suite):
    st, n = dog_suite
    assert n == len(st.tasks) == 2 * sum(len(s.actions) for s in steps_for("dog"))
    t = st.tasks[0]
    assert t.rendered().strip() == build.join_prompt(t.test.vars).strip()
    assert t.overlap_text().startswith("situation ") and "$ tmux" not in t.overlap_text()
    assert st.meta["max_overlap"] == 0.5 and st.role == "dog"
    reworded = [x for x in st.tasks if x.test.vars["family"].endswith("@r")]
    names = {a.heldout for s in steps_for("dog") for a in s.actions}
    assert reworded and all(x.test.vars["expect"] in names for x in reworded)


def test_grading_and_patrol_report(dog_suite):
    st, _ = dog_suite

    def answer(t, right):
        v = t.test.vars
        allowed = v["allowed_names"].split("|")
        act = v["expect"] if right else next(a for a in allowed if a != v["expect"])
        return "sure: " + json.dumps({"target": v.get("target", ""), "reason": "x", "preserve": True, "action": act})

    order = {t.id: i for i, t in enumerate(st.tasks)}

    def gen(batch, params):
        # right on even tasks, wrong on odd ones (matched by rendered prompt)
        out = []
        for msgs in batch:
            t = next(x for x in st.tasks if x.rendered().strip() == msgs[-1]["content"].strip())
            out.append(answer(t, order[t.id] % 2 == 0))
        return out

    res = runner.evaluate("base:tiny-llama", st, generate=gen, write=False)
    p = res.to_dict()["patrol"]
    assert p["overall"]["n"] == len(st.tasks)
    assert p["overall"]["valid_json"] == 100.0 and p["overall"]["allowed_action"] == 100.0
    assert p["overall"]["model"] == pytest.approx(100.0 * sum(1 for t in st.tasks if order[t.id] % 2 == 0) / len(st.tasks), abs=0.01)
    assert p["reworded"]["n"] == len(st.tasks) // 2
    wrong = next(t for t in st.tasks if order[t.id] % 2 == 1)
    assert not res.tasks[order[wrong.id]].passed


def test_a_constrained_run_gives_each_task_its_listed_names_and_never_gates(dog_suite):
    """`evaluate(constrain=True)` asks the generator to hold each answer's `action` to the names the
    task's prompt lists (what gt_ext.serve.choices enforces), and its result is kept apart: its
    own file name, and the deploy gate does not take it."""
    from types import SimpleNamespace

    from gt_ext.registry.gate import eval_entry

    st, _ = dog_suite
    asked: dict[str, list[str]] = {}

    def gen(batch, params):
        for msgs, p in zip(batch, params, strict=True):
            asked[msgs[-1]["content"].strip()] = p["choices"]["action"]
        return ['{"action": "none"}'] * len(batch)

    res = runner.evaluate("base:tiny-llama", st, generate=gen, write=False, constrain=True)
    assert len(asked) == len(st.tasks)
    for t in st.tasks:
        names = asked[t.rendered().strip()]
        assert names == t.test.vars["allowed_names"].split("|")
        assert all(n in t.rendered() for n in names)  # the prompt lists them
    d = res.to_dict()
    assert d["run"]["decoding"] == "constrained" and d["run"]["full"]
    assert runner.result_filename(d) == "eval-dog-patrol-constrained.json"
    rec = SimpleNamespace(role="dog", name="dog", version=1)
    entry = eval_entry(d, rec, None, "test")
    assert not entry["gating"] and "constrained decoding" in entry["why_not_gating"]
    free = runner.evaluate("base:tiny-llama", st, generate=lambda b, p: ['{"action": "none"}'] * len(b), write=False)
    assert free.to_dict()["run"]["decoding"] == "free"
    assert runner.result_filename(free.to_dict()) == "eval-dog-patrol.json"
