"""`gt-ext eval`: score a model on a suite, list suites, compare results, check contamination."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(
    help="Evaluate models on role suites (promptfoo tests and sandbox tasks) and gate deployment.",
    no_args_is_help=True,
)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console().print(t)


@app.command("run")
def run(
    model: str = typer.Option(..., "--model", "-m", help="NAME[:VER] (registry), base:<model>, or a run/export folder"),
    suite: str = typer.Option(..., "--suite", "-s", help="suite folder, promptfoo config file, or builtin:ROLE"),
    k: int = typer.Option(1, "--k", help="samples per task; k > 1 samples at the config's temperature and reports pass^k"),
    config: Path | None = typer.Option(None, "--config", help="scoring/gate config YAML laid over the default"),
    corpus: Path | None = typer.Option(None, "--corpus", help="training corpus (export folder or JSONL) for the contamination guard"),
    max_overlap: float | None = typer.Option(None, "--max-overlap", help="refuse tasks whose n-gram overlap with the corpus exceeds this share"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="only the first N tasks (a smoke run: recorded as partial, never gates)"),
    split: str | None = typer.Option(None, "--split", help="dev, heldout or all (default all); one split is a partial run"),
    engine: str = typer.Option("auto", "--engine", help="auto: core assertions in process, any other through the real "
                               "promptfoo against the served model; ours: in process only; promptfoo: every promptfoo test there"),
    grader: str | None = typer.Option(None, "--grader", help="model for model-graded assertions (llm-rubric, g-eval, ...): "
                                      "NAME[:VER], base:<model>, a run/export folder, or `base` (the config's default)"),
    constrain: bool = typer.Option(False, "--constrain", help="constrained decoding: a task's answer `action` can only be one of "
                                   "the names its prompt lists (patrol suites); written as eval-<suite>-constrained.json, never gates"),
    no_write: bool = typer.Option(False, "--no-write", help="do not write eval-<suite>.json next to the model"),
    as_json: bool = typer.Option(False, "--json", help="print the full result as JSON"),
    gate_exit: bool = typer.Option(True, "--gate-exit/--no-gate-exit",
                                   help="exit non-zero when the gate says not deployable (pipelines that record the verdict and go on: --no-gate-exit)"),
    gate_exit_code: int = typer.Option(1, "--gate-exit-code", help="the exit code for a failed gate (formulas tell it from a crash, exit 1)"),
) -> None:
    """Score MODEL on SUITE: a table per category, the composite and the gate verdict."""
    from gt_ext.evals.runner import evaluate

    if k < 1:
        raise GtExtError(f"--k must be >= 1, got {k}")
    res = evaluate(model, suite, k=k, config=config, corpus=corpus, max_overlap=max_overlap,
                   limit=limit, split=split, write=not no_write, progress=not as_json, engine=engine, grader=grader,
                   constrain=constrain)
    d = res.to_dict()
    if as_json:
        print(json.dumps(d, indent=2))
        return
    _print_result(d, res.written_to)
    if gate_exit and not res.gate["deployable"]:
        raise typer.Exit(gate_exit_code)


def _print_result(d: dict[str, Any], written_to: str | None) -> None:
    rows = [[c, v["passed"], v["total"], f"{v['score']:.1f}"] for c, v in d["categories"].items()]
    _table(f"{d['model']} on {d['suite']} (k={d['k']})", ["category", "passed", "total", "score"], rows)
    pk = d["pass_k"]
    print(f"composite: {d['composite']:.1f}   pass@1: {pk['pass@1']:.1f}   pass^{pk['k']}: {pk['pass^k']:.1f}")
    run = d.get("run") or {}
    for name, sp in (d.get("splits") or {}).items():
        if len(d["splits"]) > 1:
            print(f"  {name}: composite {sp['composite']:.1f} ({sp['passed']}/{sp['total']} tasks, {sp['scenarios']} scenarios)")
    if run and not run.get("full"):
        print(f"partial run ({run.get('run_tasks')} of {run.get('suite_tasks')} tasks): recorded as such, never gates a deploy")
    if d.get("skipped"):
        print(f"skipped (not graded): {len(d['skipped'])}")
        for t in [t for t in d["tasks"] if t.get("skipped")][:10]:
            print(f"  {t['id']}: {t['reason'].removeprefix('skipped: ')}")
    if run.get("grader"):
        print(f"model-graded assertions graded by {run['grader']}")
    if d.get("contamination", {}).get("refused"):
        print(f"refused by the contamination guard: {', '.join(d['contamination']['refused'])}")
    if d.get("patrol"):
        _print_patrol(d["patrol"])
    g = d["gate"]
    print(f"gate ({d.get('role') or 'default'}): {'DEPLOYABLE' if g['deployable'] else 'NOT deployable'}: "
          + "; ".join(g["reasons"]))
    if written_to:
        print(f"written: {written_to}")


def _print_patrol(p: dict[str, Any]) -> None:
    """Per step: the model next to the best constant action, a random allowed action and no-op."""
    cols = ["step", "n", "model", "best const", "random", "no-op", "json", "allowed", "learned"]
    rows = [[k, r["n"], f"{r['model']:.1f}", f"{r['best_constant']:.1f} ({r['best_constant_action']})",
             f"{r['random_allowed']:.1f}", f"{r['always_noop']:.1f}", f"{r['valid_json']:.1f}",
             f"{r['allowed_action']:.1f}", "yes" if r["learned"] else "no"] for k, r in p["steps"].items()]
    o = p["overall"]
    rows.append(["overall", o["n"], f"{o['model']:.1f}", f"{o['best_constant']:.1f}", f"{o['random_allowed']:.1f}",
                 f"{o['always_noop']:.1f}", f"{o['valid_json']:.1f}", f"{o['allowed_action']:.1f}",
                 f"{o['steps_learned']}/{o['steps']}"])
    _table("patrol steps: model vs baselines (pass %)", cols, rows)
    rw = p.get("reworded") or {}
    if rw.get("n"):
        print(f"reworded family: pass {rw['model']:.1f}, valid JSON {rw['valid_json']:.1f}, "
              f"allowed action {rw['allowed_action']:.1f} (n={rw['n']})")


def _load_result(ref: str, suite: str | None) -> dict[str, Any]:
    """A result JSON file, or a model folder holding eval-<suite>.json."""
    p = Path(ref).expanduser()
    if p.is_dir():
        files = sorted(p.glob(f"eval-{suite}.json" if suite else "eval-*.json"))
        if not files:
            raise GtExtError(f"{p}: no eval-{suite or '*'}.json here (run gt-ext eval run first)")
        if len(files) > 1:
            raise GtExtError(f"{p}: several results ({', '.join(f.name for f in files)}); pass --suite")
        p = files[0]
    if not p.is_file():
        raise GtExtError(f"{p}: no such result file or folder")
    try:
        d = json.loads(p.read_text())
    except ValueError as e:
        raise GtExtError(f"{p}: not JSON ({e})") from e
    if not isinstance(d, dict) or "categories" not in d or "composite" not in d:
        raise GtExtError(f"{p}: not an eval result (no categories/composite)")
    return d


@app.command("compare")
def compare(
    a: str = typer.Argument(..., help="result JSON or model folder (A)"),
    b: str = typer.Argument(..., help="result JSON or model folder (B)"),
    suite: str | None = typer.Option(None, "--suite", help="suite name when a folder holds several results"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
) -> None:
    """Show two results side by side: categories, composite, pass^k, gate, and tasks that differ."""
    da, db = _load_result(a, suite), _load_result(b, suite)
    cats = sorted(set(da["categories"]) | set(db["categories"]))
    rows = []
    for c in cats:
        sa = da["categories"].get(c, {}).get("score")
        sb = db["categories"].get(c, {}).get("score")
        delta = (sb - sa) if sa is not None and sb is not None else None
        rows.append({"category": c, "a": sa, "b": sb, "delta": delta})
    ta = {t["id"]: t["passed"] for t in da.get("tasks", [])}
    tb = {t["id"]: t["passed"] for t in db.get("tasks", [])}
    flipped = sorted(i for i in set(ta) & set(tb) if ta[i] != tb[i])
    out = {
        "a": {"model": da["model"], "suite": da["suite"], "composite": da["composite"],
              "deployable": da["gate"]["deployable"], "pass^k": da["pass_k"].get("pass^k")},
        "b": {"model": db["model"], "suite": db["suite"], "composite": db["composite"],
              "deployable": db["gate"]["deployable"], "pass^k": db["pass_k"].get("pass^k")},
        "composite_delta": round(db["composite"] - da["composite"], 2),
        "categories": rows,
        "b_fixed": [i for i in flipped if tb[i]],
        "b_broke": [i for i in flipped if ta[i]],
    }
    if da["suite"] != db["suite"]:
        out["warning"] = f"different suites: {da['suite']} vs {db['suite']}"
    if as_json:
        print(json.dumps(out, indent=2))
        return

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    table = [[r["category"], f(r["a"]), f(r["b"]), ("+" if (r["delta"] or 0) > 0 else "") + f(r["delta"])] for r in rows]
    table.append(["composite", f(da["composite"]), f(db["composite"]),
                  ("+" if out["composite_delta"] > 0 else "") + f(out["composite_delta"])])
    table.append(["deployable", da["gate"]["deployable"], db["gate"]["deployable"], ""])
    _table(f"A = {da['model']}   B = {db['model']}   ({da['suite']})", ["category", "A", "B", "B - A"], table)
    if out.get("warning"):
        print(f"warning: {out['warning']}")
    print(f"tasks B passes and A fails: {len(out['b_fixed'])}; A passes and B fails: {len(out['b_broke'])}")


@app.command("suites")
def suites(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """List the builtin suites with their task counts per category."""
    from collections import Counter

    from gt_ext.evals import suite as suite_mod

    out = []
    for d in sorted(p for p in suite_mod.TASKS_DIR.iterdir() if p.is_dir()):
        s = suite_mod.load(d)
        out.append({"suite": f"builtin:{d.name}", "role": s.role, "tasks": len(s.tasks),
                    "categories": dict(sorted(Counter(t.category for t in s.tasks).items()))})
    if as_json:
        print(json.dumps(out, indent=2))
        return
    _table("builtin suites", ["suite", "role", "tasks", "categories"],
           [[o["suite"], o["role"], o["tasks"], ", ".join(f"{c} {n}" for c, n in o["categories"].items())] for o in out])


@app.command("check")
def check(
    suite: str = typer.Option(..., "--suite", "-s", help="suite folder or builtin:ROLE"),
    corpus: Path = typer.Option(..., "--corpus", help="corpus export folder, JSONL file or folder of JSONL/text"),
    max_overlap: float | None = typer.Option(None, "--max-overlap", help="refusal threshold (share of n-grams)"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Contamination guard: n-gram overlap of each task's prompt with a training corpus."""
    from gt_ext.evals import contamination
    from gt_ext.evals import suite as suite_mod

    s = suite_mod.load(suite)
    report = contamination.check_tasks(s.tasks, corpus, max_overlap=max_overlap)
    d = report.to_dict()
    if as_json:
        print(json.dumps(d, indent=2))
    else:
        top = sorted(d["overlap"].items(), key=lambda kv: -kv[1])[:10]
        _table(f"overlap of {s.name} with {corpus} (n={d['n']}, refuse > {d['max_overlap']})",
               ["task", "overlap"], [[t, f"{v:.3f}"] for t, v in top])
        print(f"refused: {len(d['refused'])} of {len(s.tasks)}" + (f": {', '.join(d['refused'])}" if d["refused"] else ""))
    if d["refused"]:
        raise typer.Exit(1)
