"""`gt-ext eval ...` through gt_ext.cli.main: exit codes, one-line errors, --json listings."""

from __future__ import annotations

import json

import pytest

from gt_ext.cli import main
from gt_ext.evals import jsrun


def _result(tmp_path, name, model, patrol, composite, deployable, tasks):
    d = {"suite": "witness", "model": model, "role": "witness", "k": 1, "composite": composite,
         "categories": {"patrol": {"passed": 1, "total": 2, "score": patrol}},
         "pass_k": {"k": 1, "pass^k": composite, "pass@k": composite, "pass@1": composite},
         "gate": {"deployable": deployable, "threshold": 75, "reasons": ["x"]},
         "tasks": [{"id": i, "category": "patrol", "passed": p, "score": 100.0 * p, "output": ""} for i, p in tasks.items()]}
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_compare_json(tmp_path, capsys):
    a = _result(tmp_path, "a.json", "base:smollm2", 0.0, 0.0, False, {"t1": False, "t2": True})
    b = _result(tmp_path, "b.json", "witness:1", 50.0, 50.0, False, {"t1": True, "t2": True})
    assert main(["eval", "compare", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["composite_delta"] == 50.0 and out["b_fixed"] == ["t1"] and out["b_broke"] == []
    assert out["categories"] == [{"category": "patrol", "a": 0.0, "b": 50.0, "delta": 50.0}]
    assert main(["eval", "compare", str(a), str(b)]) == 0
    assert "composite" in capsys.readouterr().out


def test_compare_bad_inputs(tmp_path, capsys):
    assert main(["eval", "compare", str(tmp_path / "nope.json"), str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope.json" in err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["eval", "compare", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2
    assert "not an eval result" in capsys.readouterr().err


def test_run_errors_exit_2(tmp_path, capsys):
    assert main(["eval", "run", "--model", "base:tiny-llama", "--suite", str(tmp_path / "none")]) == 2
    assert "suite not found" in capsys.readouterr().err
    assert main(["eval", "run", "--model", "base:tiny-llama", "--suite", "builtin:witness", "--k", "0"]) == 2
    assert main(["eval", "run", "--model", str(tmp_path), "--suite", "builtin:witness"]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_suites_json(capsys):
    assert main(["eval", "suites", "--json"]) == 0
    out = {s["suite"]: s for s in json.loads(capsys.readouterr().out)}
    assert out["builtin:witness"]["tasks"] >= 40 and out["builtin:polecat"]["tasks"] >= 60


def test_check_reports_overlap(tmp_path, capsys):
    leak = tmp_path / "c.jsonl"
    leak.write_text(json.dumps({"messages": [{"role": "user", "content":
        "polecat nux: hook gt-8a1 in_progress, last output 1 min ago (running pytest)"}]}) + "\n")
    assert main(["eval", "check", "--suite", "builtin:witness", "--corpus", str(leak), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["refused"] == ["w-patrol-02-busy"]


@pytest.mark.integration
@pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")
def test_run_real_tiny_model_json(tmp_path, capsys):
    """Real generation (tiny random LLaMA through the serving Generator) on 2 witness tasks."""
    rc = main(["eval", "run", "--model", "base:tiny-llama", "--suite", "builtin:witness", "--limit", "2", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"] == "base:tiny-llama" and len(d["tasks"]) == 2
    assert d["gate"]["deployable"] is False  # a random model does not pass the witness gate
    # A --limit run is a smoke run: written apart from a full result, marked partial.
    assert d["run"]["full"] is False and d["run"]["limit"] == 2 and d["run"]["suite_tasks"] >= 40
    written = tmp_path / "gthome" / "evals" / "base-tiny-llama" / "eval-witness-partial.json"
    assert json.loads(written.read_text())["composite"] == d["composite"]
    assert not (written.parent / "eval-witness.json").exists()


@pytest.mark.integration
@pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")
def test_run_table_gate_exit_code(tmp_path, capsys):
    """A failed gate exits 1 (a CI check), unless --no-gate-exit (a pipeline that records it)."""
    args = ["eval", "run", "--model", "base:tiny-llama", "--suite", "builtin:witness", "--limit", "1", "--no-write"]
    assert main(args) == 1
    assert "NOT deployable" in capsys.readouterr().out
    assert main([*args, "--no-gate-exit"]) == 0


@pytest.mark.parametrize("limit", ["0", "-2"])
def test_limit_below_one_is_refused(limit, capsys):
    """Issue #20: --limit 0 ran 42 tasks, --limit -2 ran 40."""
    assert main(["eval", "run", "--model", "base:tiny-llama", "--suite", "builtin:witness", "--limit", limit]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--limit" in err and "greater than or equal to 1" in err
