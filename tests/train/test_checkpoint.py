"""The one checkpoint format: atomic folders, weights-only loading, RNG states restored."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

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
