"""The one checkpoint format: atomic folders, weights-only loading, RNG states restored."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from train_corpus import write_corpus

from gt_ext.cli import main
from gt_ext.errors import GtExtError
from gt_ext.train import checkpoint
from gt_ext.train.config import LoraSettings
from gt_ext.train.lora import add_lora


@pytest.fixture(scope="module")
def model():
    from gt_ext.models import load_model

    m, _ = load_model("tiny-llama")
    torch.manual_seed(0)
    return add_lora(m, LoraSettings(r=2, targets=["q_proj"]))


def _state(step: int) -> checkpoint.TrainerState:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    return checkpoint.TrainerState(step=step, optimizer=opt.state_dict(), scheduler=None,
                                   data={"epoch": 1, "index": 2, "seed": 3, "items": 4}, nonfinite_total=1)


def test_save_keep_and_read_back(tmp_path, model):
    for step in (2, 4, 6):
        checkpoint.save(tmp_path, model, _state(step), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-4", "step-6"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left
    st = checkpoint.read_state(checkpoint.latest(tmp_path))
    assert (st.step, st.data["index"], st.nonfinite_total) == (6, 2, 1)
    assert torch.equal(st.optimizer["state"][0]["exp_avg"], _state(6).optimizer["state"][0]["exp_avg"])


def test_rng_states_are_restored(tmp_path, model):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    checkpoint.save(tmp_path, model, _state(1), keep=1)  # snapshots the RNGs now
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    checkpoint.load(checkpoint.latest(tmp_path), model)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]


class Payload:
    """Stands for any pickled object: weights-only loading must never construct it."""


def test_a_pickled_object_is_refused_not_run(tmp_path):
    d = tmp_path / "checkpoints" / "step-1"
    d.mkdir(parents=True)
    torch.save({"format": checkpoint.FORMAT, "step": 1, "extra": Payload()}, d / checkpoint.STATE_FILE)
    with pytest.raises(GtExtError, match="not a checkpoint this version can read safely"):
        checkpoint.read_state(d)
    (d / checkpoint.STATE_FILE).unlink()
    with pytest.raises(GtExtError, match="not a checkpoint"):
        checkpoint.read_state(d)


# --- issue #20: a planted pickle ran on --resume; bars and warnings under --no-progress ------------
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


def test_warnings_print_once(tmp_path):
    """Issue #20: some warnings printed twice. Without --no-progress a run may warn (a library
    deprecation here), but no warning line may appear twice in one command's stderr."""
    import collections
    import os
    import subprocess
    import sys

    corpus = write_corpus(tmp_path / "corpus", tasks=("patrol",), n_train=4, n_val=2)
    r = subprocess.run([sys.executable, "-m", "gt_ext.cli", "train", "--role", "witness", "--corpus", str(corpus),
                        "--task", "patrol", "--out", str(tmp_path / "run"), "base_model=tiny-llama",
                        "max_steps=1", "eval_every=0", "data.pack_length=128"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert r.returncode == 0, r.stderr
    lines = [ln.strip() for ln in r.stderr.replace("\r", "\n").splitlines()]
    warned = [ln for ln in lines if "warning" in ln.lower()]
    assert warned, "the run should show a library warning here (PYTHONWARNINGS=default, no --no-progress)"
    twice = {ln: n for ln, n in collections.Counter(warned).items() if n > 1}
    assert not twice, twice
