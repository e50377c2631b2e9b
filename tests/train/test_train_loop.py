"""The loop: exact resume, NaN handling, schedule, run folder, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
from train_corpus import write_corpus

from gt_ext.cli import main
from gt_ext.train.config import load_config
from gt_ext.train.loop import lr_lambda
from gt_ext.train.run import prepare, run_training

SMALL = [
    "base_model=tiny-llama", "max_steps=6", "checkpoint_every=2", "eval_every=3", "keep_checkpoints=5",
    "data.pack_length=256", "data.batch_size=2", "optim.grad_accum=2", "optim.warmup_steps=2",
    "optim.lr=1e-2", "lora.dropout=0.1", "lora.r=4",
]


@pytest.fixture
def small_corpus(tmp_path):
    return write_corpus(tmp_path / "corpus", tasks=("patrol",), n_train=10, n_val=3)


class Interrupt(Exception):
    pass


def _losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_resume_gives_the_same_losses(tmp_path, small_corpus):
    p = prepare("witness", small_corpus, "patrol", None, SMALL)
    full = run_training(p, tmp_path / "full", progress=False)
    assert full["status"] == "done" and full["metrics"]["steps"] == 6

    def stop_at_3(step, rec):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(p, tmp_path / "cut", progress=False, callbacks=[stop_at_3])
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "failed"
    assert max(_losses(tmp_path / "cut")) == 3
    resumed = run_training(p, tmp_path / "cut", resume=True, progress=False)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(3, 7):  # step 3 was redone from the step-2 checkpoint
        assert a[step] == pytest.approx(b[step], abs=1e-6), step
    assert resumed["metrics"]["val_loss_end"] == pytest.approx(full["metrics"]["val_loss_end"], abs=1e-6)
    assert resumed["metrics"]["val_loss_start"] == full["metrics"]["val_loss_start"]
    # learning happened: the loss moved
    assert a[6] < a[1]
    # run folder layout of CONTRACTS.md
    run = tmp_path / "full"
    for rel in ("run.json", "metrics.jsonl", "loss.png", "adapter/adapter_config.json",
                "adapter/adapter_model.safetensors", "checkpoints/step-6/trainer.pt"):
        assert (run / rel).is_file(), rel
    meta = json.loads((run / "run.json").read_text())
    assert meta["lora"] == {"r": 4, "alpha": 16.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert meta["examples"] == 10 and meta["corpus_hash"]


def test_nonfinite_steps_are_skipped_then_stop_with_checkpoint(tmp_path, small_corpus, monkeypatch):
    from gt_ext.train import lora

    real = lora.load_base_for_training

    def poisoned(cfg):
        model, tok = real(cfg)
        base = model.get_base_model()
        # NaN in the hidden states of every forward pass from the first step on.
        base.model.norm.register_forward_hook(lambda m, i, o: o * float("nan"))
        return model, tok

    monkeypatch.setattr(lora, "load_base_for_training", poisoned)
    p = prepare("witness", small_corpus, "patrol", None, SMALL + ["max_nonfinite=2", "eval_every=0"])
    out = run_training(p, tmp_path / "nan", progress=False)
    assert out["status"] == "failed"
    assert out["metrics"]["nonfinite_steps"] == 2 and out["metrics"]["steps"] == 2
    assert "non-finite" in out["metrics"]["message"]
    assert (tmp_path / "nan" / "checkpoints" / "step-2" / "trainer.pt").is_file()
    recs = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in recs if r["step"] > 0] == [True, True]


def test_warmup_then_cosine():
    cfg = load_config(None, ["max_steps=100", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_dpo_run_with_precomputed_reference(tmp_path, small_corpus):
    p = prepare("witness", small_corpus, "patrol", None,
                SMALL + ["mode=dpo", "max_steps=2", "dpo.precompute_ref=true", "lora.dropout=0"])
    out = run_training(p, tmp_path / "dpo", progress=False)
    assert out["status"] == "done" and out["dpo_pairs"] == 10
    recs = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    # fresh LoRA (B = 0): policy equals reference, so the first loss is log 2
    assert recs[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert out["metrics"]["val_loss_start"] == pytest.approx(math.log(2), abs=1e-6)


def test_cli_errors_are_one_line_exit_2(tmp_path, small_corpus, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 1\n")
    cases = [
        (["--corpus", str(small_corpus), "--config", str(bad)], "optim.learning_rate"),
        (["--corpus", str(tmp_path / "missing")], "not found"),
        (["--corpus", str(small_corpus), "--task", "planning"], "empty partition"),
        (["--corpus", str(small_corpus), "optim.lr=fast"], "optim.lr"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        rc = main(["train", "--role", "witness", "--dry-run", *args, "base_model=tiny-llama"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, args
        assert needle in err and len(err.splitlines()) == 1, err
    capsys.readouterr()
    assert main(["train", "--role", "mayorr", "--corpus", str(small_corpus), "--dry-run"]) == 2


def test_cli_dry_run_prints_token_counts(small_corpus, capsys):
    rc = main(["train", "--role", "witness", "--corpus", str(small_corpus), "--dry-run", "--json", "base_model=tiny-llama"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["train"]["items"] == 10 and s["val"]["items"] == 3
    assert s["train"]["tokens"] > s["train"]["target_tokens"] > 0


def test_existing_run_folder_is_refused(tmp_path, small_corpus):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text("{}")
    p = prepare("witness", small_corpus, "patrol", None, SMALL)
    from gt_ext.errors import GtExtError

    with pytest.raises(GtExtError, match="already has a run"):
        run_training(p, tmp_path / "r", progress=False)



def test_time_limit_stops_resumably_not_done(tmp_path, small_corpus, capsys):
    """A run cut by its time budget is `stopped` (checkpoint, no adapter, CLI exit 3), and resuming
    it budget by budget ends with the same losses as one uninterrupted run."""
    sets = [*SMALL, "max_steps=3", "eval_every=0"]
    full = run_training(prepare("witness", small_corpus, "patrol", None, sets), tmp_path / "full", progress=False)
    args = ["train", "--role", "witness", "--corpus", str(small_corpus), "--task", "patrol",
            "--out", str(tmp_path / "cut"), "--no-progress", *sets, "max_cpu_s=1e-9"]
    assert main(args) == 3
    assert "stopped: CPU time limit reached at step 1 of 3" in capsys.readouterr().err
    first = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert first["status"] == "stopped" and first["metrics"]["steps"] == 1
    assert not (tmp_path / "cut" / "adapter").exists() and (tmp_path / "cut" / "checkpoints" / "step-1").is_dir()
    limited = prepare("witness", small_corpus, "patrol", None, [*sets, "max_cpu_s=1e-9"])
    out = run_training(limited, tmp_path / "cut", resume=True, progress=False)
    assert out["status"] == "stopped" and out["metrics"]["steps"] == 2
    out = run_training(limited, tmp_path / "cut", resume=True, progress=False)
    assert out["status"] == "done" and out["metrics"]["steps"] == 3  # the last step is never cut
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(b) == [1, 2, 3]
    for step in range(1, 4):
        assert a[step] == pytest.approx(b[step], abs=1e-6), step
    assert (tmp_path / "cut" / "adapter" / "adapter_config.json").is_file() and full["status"] == "done"


# --- issue #20: SIGTERM left a run `running`; --resume could not raise max_steps ------------------
def test_sigterm_stops_the_run_with_a_checkpoint(tmp_path, small_corpus):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "gt_ext.cli", "train", "--role", "witness", "--corpus", str(small_corpus),
           "--task", "patrol", "--out", str(run), "--no-progress", *SMALL, "max_steps=100000", "eval_every=0",
           "checkpoint_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # bounded wait for the first step (not a timing assertion)
        while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    rec = json.loads((run / "run.json").read_text())
    steps = rec["metrics"]["steps"]
    assert rec["status"] == "stopped" and "stopped by SIGTERM" in rec["metrics"]["message"] and steps >= 1
    assert (run / "checkpoints" / f"step-{steps}").is_dir() and "--resume" in err
    # It resumes from there (a lower max_steps than the steps done is refused, naming both).
    assert main(["train", "--role", "witness", "--corpus", str(small_corpus), "--task", "patrol", "--out", str(run),
                 "--resume", "--no-progress", *SMALL, f"max_steps={steps + 1}", "eval_every=0",
                 "checkpoint_every=0"]) == 0
    assert json.loads((run / "run.json").read_text())["metrics"]["steps"] == steps + 1


def test_resume_can_raise_max_steps_but_not_change_what_is_learnt(tmp_path, small_corpus, capsys):
    sets = [*SMALL, "max_steps=2"]
    assert run_training(prepare("witness", small_corpus, "patrol", None, sets), tmp_path / "r",
                        progress=False)["status"] == "done"
    more = run_training(prepare("witness", small_corpus, "patrol", None, [*SMALL, "max_steps=4"]), tmp_path / "r",
                        resume=True, progress=False)
    assert more["status"] == "done" and more["metrics"]["steps"] == 4
    assert sorted(_losses(tmp_path / "r")) == [1, 2, 3, 4]
    args = ["train", "--role", "witness", "--corpus", str(small_corpus), "--task", "patrol", "--out",
            str(tmp_path / "r"), "--resume", "--no-progress", *SMALL]
    assert main([*args, "max_steps=6", "optim.lr=1e-3"]) == 2
    assert "optim differ" in capsys.readouterr().err
    assert main([*args, "max_steps=3"]) == 2
    assert "max_steps=3 is below the 4 steps" in capsys.readouterr().err
