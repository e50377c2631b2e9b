"""The tiny-model recipe's exact per-step losses, pinned in fixtures/pinned_losses.json.

Any change to chat templating, target masking, packing, attention, the loss, the optimizer or the
schedule moves these numbers, and this test says which step moved first. When a change is meant
to move them, re-pin and commit the new file with the change that explains it:

    GT_EXT_REPIN=1 /work/bin/wt-run python -m pytest -q tests/train/test_pinned_losses.py

(One CPU thread, float32, the seeded random `tiny-llama`: the numbers are the same run to run.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from train_corpus import write_corpus

from gt_ext.train.run import prepare, run_training

PINNED = Path(__file__).parent / "fixtures" / "pinned_losses.json"
COMMON = ["base_model=tiny-llama", "threads=1", "seed=0", "lora.r=4", "lora.dropout=0.0", "keep_checkpoints=1",
          "checkpoint_every=0", "data.batch_size=2", "data.pack_length=256", "optim.lr=1e-2", "optim.warmup_steps=2"]
RECIPES = {
    # SFT with packing (block-diagonal attention), accumulation and warmup + cosine.
    "sft_packed": ["mode=sft", "max_steps=6", "eval_every=3", "data.pack=true", "optim.grad_accum=2"],
    # SFT one example a row (padding instead of packing).
    "sft_unpacked": ["mode=sft", "max_steps=4", "eval_every=2", "data.pack=false"],
    # DPO against the frozen reference (adapters disabled).
    "dpo": ["mode=dpo", "max_steps=4", "eval_every=2", "data.pack=false", "dpo.beta=0.1"],
}


def _run(name: str, corpus: Path, out: Path) -> dict[str, list]:
    p = prepare("witness", corpus, "patrol", None, COMMON + RECIPES[name])
    run_training(p, out / name, progress=False)
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"loss": [[r["step"], r["loss"]] for r in rows if r.get("loss") is not None],
            "val_loss": [[r["step"], r["val_loss"]] for r in rows if r.get("val_loss") is not None]}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_per_step_losses_are_the_pinned_ones(name: str, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", tasks=("patrol",), n_train=12, n_val=3)
    got = _run(name, corpus, tmp_path)
    pinned = json.loads(PINNED.read_text()) if PINNED.is_file() else {}
    if os.environ.get("GT_EXT_REPIN"):
        pinned[name] = got
        PINNED.parent.mkdir(parents=True, exist_ok=True)
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"re-pinned {name} in {PINNED.name}")
    assert name in pinned, f"no pinned losses for {name}: run with GT_EXT_REPIN=1 and commit {PINNED}"
    want = pinned[name]
    for key in ("loss", "val_loss"):
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
        for (step, value), (_, expected) in zip(got[key], want[key], strict=True):
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-6), f"{name} {key} moved first at step {step}"
    assert want["loss"][-1][1] != want["loss"][0][1]  # the pinned run did train
