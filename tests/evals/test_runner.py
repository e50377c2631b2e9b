"""evaluate(): model refs, results written next to the model, k samples, contract JSON shape."""

from __future__ import annotations

import json

import pytest

from gt_ext.errors import GtExtError
from gt_ext.evals import jsrun, runner

needs_node = pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")


def _suite(tmp_path):
    d = tmp_path / "suite"
    d.mkdir(exist_ok=True)
    (d / "suite.yaml").write_text("name: mini\nrole: witness\nmax_new_tokens: 8\n")
    (d / "promptfooconfig.yaml").write_text("""
prompts: ["{{ q }}"]
tests:
  - description: one
    metadata: {category: patrol}
    vars: {q: alpha}
    assert: [{type: contains, value: alpha}]
  - description: two
    metadata: {category: patrol}
    vars: {q: beta}
    assert: [{type: contains, value: gamma}]
  - description: three
    metadata: {category: planning}
    vars: {q: gamma}
    assert: [{type: starts-with, value: gam}]
""")
    return d


def _echo(batch, params):
    return [m[-1]["content"] for m in batch]


def test_evaluate_writes_contract_json_next_to_model(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"base_model": "tiny-llama"}))
    res = runner.evaluate(str(run), _suite(tmp_path), generate=_echo)
    d = json.loads((run / "eval-mini.json").read_text())
    assert set(d) >= {"suite", "model", "categories", "composite", "pass_k", "gate", "tasks"}
    assert d["categories"] == {"patrol": {"passed": 1, "total": 2, "score": 50.0},
                               "planning": {"passed": 1, "total": 1, "score": 100.0}}
    # witness weights: patrol 3, planning 1 -> (150 + 100) / 4
    assert d["composite"] == 62.5 and res.composite == 62.5
    assert d["gate"]["deployable"] is False and d["gate"]["threshold"] == 75
    assert [t["id"] for t in d["tasks"]] == ["one", "two", "three"]
    assert {"id", "category", "passed", "score", "output"} <= set(d["tasks"][0])
    assert not list(run.glob(".eval-mini.json.*"))  # atomic write left no temp file
    from gt_ext.evals import provenance

    assert provenance.check(d) is None  # signed: `gt model register` may trust it
    assert provenance.check({**d, "composite": 99.0}) == "its signature does not match (written or edited elsewhere)"


def test_k_samples_use_distinct_seeds_and_report_pass_k(tmp_path):
    seen = []

    def flaky(batch, params):
        seen.extend(p["seed"] for p in params)
        assert all(p["temperature"] > 0 for p in params)
        # the first task passes only on samples 0 and 2: pass^k fails it, pass@k keeps it
        return [m[-1]["content"] if (p["seed"] // 1000 % 2 == 0 or "alpha" not in m[-1]["content"]) else "no"
                for m, p in zip(batch, params, strict=True)]

    res = runner.evaluate("base:tiny-llama", _suite(tmp_path), k=3, generate=flaky, write=False)
    assert len(set(seen)) == 9
    one = res.tasks[0]
    assert len(one.samples) == 3 and not all(s.passed for s in one.samples) and any(s.passed for s in one.samples)
    assert res.pass_k["k"] == 3 and res.pass_k["pass^k"] < res.pass_k["pass@k"]


def test_bad_k_and_limit(tmp_path):
    with pytest.raises(GtExtError, match="--k"):
        runner.evaluate("base:tiny-llama", _suite(tmp_path), k=0, generate=_echo)
    res = runner.evaluate("base:tiny-llama", _suite(tmp_path), generate=_echo, limit=1, write=False)
    assert len(res.tasks) == 1


@needs_node
def test_witness_suite_reference_answers_pass_and_wrong_ones_fail(tmp_path):
    """Every builtin witness task is satisfiable, and a wrong action fails it (no task passes anything)."""
    from gt_ext.evals import suite as suite_mod

    st = suite_mod.load("builtin:witness")
    cmd = {"nudge": "gt nudge {t} 'run your hook'", "cleanup": "gt polecat nuke {t}",
           "restart": "gt polecat restart {t}", "escalate": "gt escalate '{t} is stuck'", "wait": "gt peek {t}"}

    def answer(task, right=True):
        v = task.test.vars
        acts = v["expect"].split("|")
        act = acts[0] if right else next(a for a in cmd if a not in acts)
        tgt = v.get("target", "nux")
        return json.dumps({"action": act, "target": tgt, "reason": "r", "command": cmd[act].format(t=tgt)})

    by_prompt = {t.rendered(): t for t in st.tasks}
    res = runner.evaluate("base:tiny-llama", st, write=False,
                          generate=lambda b, p: [answer(by_prompt[m[-1]["content"]]) for m in b])
    assert res.composite == 100.0, [t.id for t in res.tasks if not t.passed]
    res = runner.evaluate("base:tiny-llama", st, write=False,
                          generate=lambda b, p: [answer(by_prompt[m[-1]["content"]], right=False) for m in b])
    assert res.composite == 0.0


def test_registry_ref_records_the_result(tmp_path, monkeypatch):
    """A registry ref resolves to its version's adapter, and the result lands in the registry."""
    from gt_ext.models.refs import resolve
    from gt_ext.registry import Registry

    monkeypatch.setenv("GT_EXT_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("GT_EXT_REGISTRY_BACKEND", "sqlite")
    monkeypatch.delenv("GT_ROOT", raising=False)
    monkeypatch.delenv("GT_TOWN_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"0")
    (run / "run.json").write_text(json.dumps({"role": "witness", "base_model": "tiny-llama", "status": "done"}))
    with Registry.open() as reg:
        rec = reg.register(run)
    ref = resolve(rec.ref)
    assert ref.adapters == [(rec.adapter_dir, 1.0)] and ref.base_model == "tiny-llama"
    res = runner.evaluate(rec.ref, _suite(tmp_path), generate=_echo)
    with Registry.open() as reg:
        got = reg.get(rec.ref)
    # Recorded with the version; a full run, but of a suite that is not the role's gating suite:
    # it does not set the version's gate.
    (entry,) = got.eval_runs
    assert entry["composite"] == res.composite and entry["full"] and entry["source"] == "run"
    assert not entry["gating"] and "gating suite builtin:witness" in entry["why_not_gating"]
    assert got.gate is None and got.eval_composite is None
    assert json.loads((got.path / "eval-mini.json").read_text())["composite"] == res.composite


@pytest.mark.parametrize("missing", ["bd", "bwrap"])
def test_sandbox_tasks_without_bd_are_skipped_not_failed(monkeypatch, missing):
    """No bd, or no bubblewrap to jail the model's commands in: the sandbox tasks are skipped."""
    from gt_ext.gastown import binaries

    if missing == "bd":
        monkeypatch.setattr(binaries, "find_bd", lambda required=True: None)
    else:
        monkeypatch.setenv("GT_EXT_BWRAP", "no-such-bwrap")
    calls = []

    def gen(batch, params):
        calls.append(len(batch))
        return ["gt done" for _ in batch]

    res = runner.evaluate("base:tiny-llama", "builtin:polecat", generate=gen, write=False, limit=None)
    d = res.to_dict()
    assert len(d["skipped"]) == 18 and all(s.startswith("p-sb-") for s in d["skipped"])
    assert sum(calls) == 42  # only the promptfoo tasks were generated
    assert sum(c["total"] for c in d["categories"].values()) == 42


def test_failed_setup_skips_only_that_task(tmp_path):
    from gt_ext.evals import suite as suite_mod

    st = suite_mod.load(_suite(tmp_path))

    class Broken:
        id, category = "broken", "patrol"

        def prepare(self):
            raise GtExtError("sandbox setup: git init failed")

        def cleanup(self):
            self.cleaned = True

    broken = Broken()
    st.tasks.insert(1, broken)
    res = runner.evaluate("base:tiny-llama", st, generate=_echo, write=False)
    d = res.to_dict()
    assert d["skipped"] == ["broken"] and broken.cleaned
    assert d["categories"]["patrol"]["total"] == 2


def test_role_system_turn_is_the_training_one_and_only_when_asked(tmp_path):
    """suite.yaml `system_prompt: role` puts the corpus's system turn for the role first; without the
    key the task's messages go to the model as they are (foreign promptfoo suites run unchanged)."""
    from gt_ext.corpus.tags import system_prompt

    seen = []

    def spy(batch, params):
        seen.extend(batch)
        return _echo(batch, params)

    d = _suite(tmp_path)
    res = runner.evaluate("base:tiny-llama", d, generate=spy, write=False)
    assert res.system_prompt is None and all(m[0]["role"] == "user" for m in seen)
    seen.clear()
    (d / "suite.yaml").write_text("name: mini\nrole: witness\nsystem_prompt: role\nmax_new_tokens: 8\n")
    res = runner.evaluate("base:tiny-llama", d, generate=spy, write=False)
    assert res.system_prompt == system_prompt("witness") == res.to_dict()["system_prompt"]
    assert [m[0] for m in seen] == [{"role": "system", "content": system_prompt("witness")}] * 3
    assert [m[1]["content"] for m in seen] == ["alpha", "beta", "gamma"]
    (d / "suite.yaml").write_text("name: mini\nsystem_prompt: role\n")
    with pytest.raises(GtExtError, match="system_prompt: role needs a `role`"):
        runner.evaluate("base:tiny-llama", d, generate=spy, write=False)


def test_a_task_with_its_own_system_turn_keeps_it():
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]
    assert runner.with_system(own, "role text") == own
    assert runner.with_system([{"role": "user", "content": "q"}], None) == [{"role": "user", "content": "q"}]
