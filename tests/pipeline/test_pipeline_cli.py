"""`gt-ext train --backend pipeline --stages N`: the command starts its own stage servers (a fresh
swarm key in the run folder), trains through them, stops them, and the run folder goes through the
normal export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from gt_ext.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_backend_pipeline_dpo_with_a_local_stage_then_export(tiny4: Path, tmp_path: Path, capsys):
    """DPO (reference log-probs from the same stage with LoRA off) through a stage the command
    starts itself; the adapter equals one process's on the same data; export takes the run."""
    import psutil
    from safetensors.torch import load_file
    from train_corpus import write_corpus

    from gt_ext.train.run import prepare, run_training

    corpus = write_corpus(tmp_path / "corpus", n_train=6, n_val=2)
    run = tmp_path / "run"
    sets = [f"base_model={tiny4}", "mode=dpo", "lora.r=4", "max_steps=2", "data.batch_size=2",
            "data.pack_length=256", "data.max_length=256", "eval_every=0", "checkpoint_every=1", "threads=1",
            "optim.lr=0.01", "attention=dense"]
    assert main(["train", "--backend", "pipeline", "--stages", "1", "--run", "clitest", "--role", "witness",
                 "--corpus", str(corpus), "--out", str(run), "--no-progress", *sets]) == 0
    out = capsys.readouterr().out
    assert "done, 2 steps" in out
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["backend"] == "pipeline" and record["metrics"]["steps"] == 2
    assert record["dpo_pairs"] > 0
    single = tmp_path / "single"
    run_training(prepare("witness", corpus, None, None, sets), single, progress=False)
    a, b = load_file(run / "adapter" / "adapter_model.safetensors"), load_file(single / "adapter" / "adapter_model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "pipeline.key").stat().st_mode & 0o077 == 0
    assert (run / "stages" / "checkpoints" / "layers-0-4" / "step-2" / "stage.pt").is_file()
    assert (run / "checkpoints" / "step-2" / "trainer.pt").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "reward_acc" in rows[1]
    # The stage processes it started are gone.
    assert not [p for p in psutil.process_iter(["cmdline"]) if "clitest" in " ".join(p.info["cmdline"] or [])
                and p.pid != os.getpid()]
    # The gathered adapter is a normal PEFT adapter: export merges it into the base model.
    assert main(["export", str(run), "--to", str(tmp_path / "export"), "--gguf", "none"]) == 0
    assert (tmp_path / "export" / "merged" / "config.json").is_file()


def test_pipeline_backend_bad_options_are_one_line_errors(tmp_path: Path, capsys, monkeypatch):
    from train_corpus import write_corpus

    corpus = write_corpus(tmp_path / "corpus", n_train=4, n_val=2)
    base = ["train", "--role", "witness", "--corpus", str(corpus), "--out", str(tmp_path / "r")]
    assert main([*base, "--backend", "pipeline"]) == 2
    assert "needs --stages N" in capsys.readouterr().err
    assert main([*base, "--backend", "nope"]) == 2
    assert "--backend 'nope'" in capsys.readouterr().err
    assert main([*base, "--backend", "pipeline", "--stages", "2", "--run", "a_b"]) == 2
    assert "run name 'a_b'" in capsys.readouterr().err
    # Local stages run node0: without a checkout the command says so at once (not after waiting
    # for stages that exited).
    monkeypatch.delenv("NODE0_PATH", raising=False)
    assert main([*base, "--backend", "pipeline", "--stages", "1", "base_model=tiny-llama"]) == 2
    assert "no node0 checkout: set NODE0_PATH" in capsys.readouterr().err
