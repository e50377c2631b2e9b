"""Checkpoints load without running pickled code (issue #20: a planted pickle ran on --resume)."""

from __future__ import annotations

import pytest
import torch
from train_corpus import write_corpus

from gt_ext.cli import main
from gt_ext.errors import GtExtError
from gt_ext.train import checkpoint


class Planted:
    """Unpickling this runs `open(path, "w")`: the file appearing means the pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(run_dir, marker, step=2):
    ck = checkpoint.checkpoints_dir(run_dir) / f"step-{step}"
    (ck / checkpoint.ADAPTER_DIR).mkdir(parents=True)
    torch.save({"format": checkpoint.FORMAT, "step": step, "optimizer": Planted(marker)}, ck / checkpoint.STATE_FILE)
    return ck


def test_read_state_refuses_a_planted_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ck = _plant(tmp_path / "run", marker)
    with pytest.raises(GtExtError, match="not a checkpoint this version can read safely"):
        checkpoint.read_state(ck)
    assert not marker.exists()
    torch.load(ck / checkpoint.STATE_FILE, weights_only=False)  # the plant is real: an unsafe load runs it
    assert marker.exists()


def test_resume_from_a_planted_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", tasks=("patrol",), n_train=4, n_val=2)
    marker = tmp_path / "pwned"
    _plant(tmp_path / "run", marker)
    rc = main(["train", "--role", "witness", "--corpus", str(corpus), "--task", "patrol", "--out", str(tmp_path / "run"),
               "--resume", "--no-progress", "base_model=tiny-llama", "max_steps=3", "data.pack_length=128"])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "trainer.pt" in err and "safely" in err


def test_no_progress_run_prints_no_bars_and_no_library_warnings(tmp_path):
    """Issue #20: weight-loading bars and a transformers FutureWarning printed under --no-progress."""
    import os
    import subprocess
    import sys

    corpus = write_corpus(tmp_path / "corpus", tasks=("patrol",), n_train=4, n_val=2)
    r = subprocess.run([sys.executable, "-m", "gt_ext.cli", "train", "--role", "witness", "--corpus", str(corpus),
                        "--task", "patrol", "--out", str(tmp_path / "run"), "--no-progress", "base_model=tiny-llama",
                        "max_steps=1", "eval_every=0", "data.pack_length=128"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.startswith(f"run {tmp_path / 'run'}: done, 1 steps")
