"""`gt-ext runs`: discovery, config diff, the comparison table and plot; three real tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.cli import main
from gt_ext.errors import GtExtError
from gt_ext.runs.compare import config_diff, plot_losses, sparkline, summary_rows
from gt_ext.runs.discover import discover, load_run, resolve


def write_run(folder: Path, lr: float, losses: list[float], kind: str = "local", evals: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    cfg = {"base_model": "tiny-llama", "mode": "sft", "max_steps": len(losses), "optim": {"lr": lr, "warmup_steps": 2},
           "lora": {"r": 8}}
    run = {"role": "witness", "task": None, "base_model": "tiny-llama", "config": cfg, "corpus_hash": "c" * 64,
           "examples": 12, "dpo_pairs": 0, "status": "done", "parent": None, "updated": f"2026-12-0{len(losses)}T00:00:00Z",
           "metrics": {"steps": len(losses), "val_loss_start": losses[0] + 0.1, "val_loss_end": losses[-1],
                       "tokens_per_s": 100.0, "train_wall_s": 12.5, "train_cpu_s": 20.0}}
    if kind == "swarm":
        run["swarm"] = {"run_id": "s1"}
    (folder / "run.json").write_text(json.dumps(run))
    rows = [{"step": 0, "val_loss": losses[0] + 0.1}] + [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
    rows[-1]["val_loss"] = losses[-1]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for suite, cats in (evals or {}).items():
        (folder / f"eval-{suite}.json").write_text(json.dumps({
            "suite": suite, "categories": {c: {"passed": 1, "total": 2, "score": s} for c, s in cats.items()},
            "composite": sum(cats.values()) / len(cats), "gate": {"deployable": min(cats.values()) >= 50}}))
    return folder


def test_discover_diff_table_plot(tmp_path: Path) -> None:
    a = write_run(tmp_path / "runs" / "a", 1e-3, [3.0, 2.0, 1.0], evals={"builtin_witness": {"patrol": 40.0, "git": 60.0}})
    write_run(tmp_path / "runs" / "b", 2e-3, [3.0, 1.5], kind="swarm", evals={"builtin_witness": {"patrol": 70.0, "git": 80.0}})
    (tmp_path / "runs" / "export-like").mkdir()  # an export is not a run
    (tmp_path / "runs" / "export-like" / "run.json").write_text("{}")
    (tmp_path / "runs" / "export-like" / "manifest.json").write_text("{}")
    runs = discover([tmp_path / "runs"])
    assert [r.id for r in runs] == ["a", "b"]  # newest first (updated)
    ra, rb = runs
    assert rb.kind == "swarm" and ra.kind == "local" and ra.train_loss == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert config_diff(runs) == {"max_steps": [3, 2], "optim.lr": [0.001, 0.002]}  # only what differs
    rows = dict(summary_rows(runs))
    assert rows["config optim.lr"] == ["0.001", "0.002"] and "config lora.r" not in rows
    assert rows["eval builtin_witness patrol"] == ["40.0", "70.0"]
    assert rows["gate (builtin_witness)"] == ["fail", "pass"]
    assert rows["wall / CPU s"] == ["12 / 20", "12 / 20"] and rows["registry"] == ["-", "-"]
    png = plot_losses(runs, tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert resolve(str(a), runs).id == "a" and resolve("b", runs).kind == "swarm"
    with pytest.raises(GtExtError, match="unknown run 'nope'"):
        resolve("nope", runs)


def test_sparkline() -> None:
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([1.0, 1.0]) == "▁▁" and sparkline([]) == ""
    assert len(sparkline([float(i) for i in range(100)], width=10)) == 10


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(GtExtError, match="not a run folder"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(GtExtError, match="unreadable"):
        load_run(tmp_path)


@pytest.mark.integration
def test_compare_three_real_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Three tiny-model runs of the real trainer, compared through the CLI: the table and the PNG."""
    from train_corpus import write_corpus

    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GT_TOWN_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path / "corpus", n_train=8, n_val=2)
    for name, lr in (("lr-low", "1e-4"), ("lr-mid", "1e-3"), ("lr-high", "1e-2")):
        assert main(["train", "--role", "witness", "--corpus", str(corpus), "--out", str(tmp_path / "home" / "runs" / name),
                     "--no-progress", "base_model=tiny-llama", "max_steps=4", "eval_every=2", "checkpoint_every=0",
                     f"optim.lr={lr}", "data.max_length=128", "data.pack_length=256"]) == 0
    capsys.readouterr()
    out_png = tmp_path / "cmp.png"
    assert main(["runs", "compare", "lr-low", "lr-mid", "lr-high", "--out", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "config optim.lr" in text and "0.0001" in text and "0.01" in text and str(out_png) in text
    assert "config lora.r" not in text  # the same in all three
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert main(["runs", "compare", "lr-low", "lr-high", "--json", "--out", str(tmp_path / "two.png")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config_diff"] == {"optim.lr": [0.0001, 0.01]}
    assert [len(r["train_loss"]) for r in data["runs"]] == [4, 4]
    assert main(["runs", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in listed} == {"lr-low", "lr-mid", "lr-high"}
    assert main(["runs", "show", "lr-mid"]) == 0
    assert "train loss" in capsys.readouterr().out
    assert main(["runs", "compare", "lr-low"]) == 2  # one run is not a comparison
    assert main(["runs", "show", "missing-run"]) == 2
