"""One checkpoint format for every trainer: `gt-ext train`, a swarm peer, the pipeline client.

    RUN_DIR/checkpoints/step-N/adapter/      the trainable LoRA (PEFT save_pretrained)
    RUN_DIR/checkpoints/step-N/trainer.pt    TrainerState: step, optimizer, scheduler, data position,
                                             RNG states, non-finite counters, trainer extras

`trainer.pt` holds only tensors, numbers, strings, lists and dicts, and is read with
`torch.load(weights_only=True)`: loading a checkpoint runs no pickled code. The RNG states (torch
CPU, every CUDA device, Python `random`, NumPy) are saved AND restored, so a resumed run draws the
same numbers the uninterrupted one would have.

The optimizer state is a torch AdamW `state_dict()` over the adapter's parameters in model order and
the scheduler a LambdaLR `state_dict()` (last_epoch = optimizer steps taken). A swarm peer's
hivemind optimizer wraps the same AdamW and steps the same schedule per global step, so a swarm
checkpoint resumes with `gt-ext train --resume` and a local one with `gt-ext swarm start --resume`.

A checkpoint is written into a temp folder and renamed into place: a kill at any point leaves the
previous checkpoints and either the whole new one or none of it.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gt_ext.atomic import atomic_dir
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

FORMAT = 1
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer.pt"
ADAPTER_DIR = "adapter"


@dataclass
class TrainerState:
    """Everything besides the adapter weights that a trainer needs to continue exactly."""

    step: int  # optimizer (global) steps taken
    optimizer: dict[str, Any]  # torch AdamW state_dict
    scheduler: dict[str, Any] | None  # LambdaLR state_dict
    data: dict[str, Any]  # BatchLoader.state_dict(): epoch, index, seed, items
    rng: dict[str, Any] = field(default_factory=lambda: rng_state())
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # trainer-specific, JSON-like values only


# ------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), Python `random` and NumPy, as tensors,
    numbers and lists (what `torch.load(weights_only=True)` accepts)."""
    import numpy as np

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the RNGs back to `rng_state()`'s snapshot (CUDA only when the device count matches)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this machine %d: not restored",
                        len(cuda), torch.cuda.device_count())


# ------------------------------------------------------------------------------------ save / load


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    """`RUN_DIR/checkpoints/`."""
    return Path(run_dir) / CHECKPOINTS_DIR


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (temp folders of a killed write skipped)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save(run_dir: str | os.PathLike, model: Any, state: TrainerState, keep: int) -> Path:
    """Write `checkpoints/step-<state.step>/` atomically (temp folder + rename); keep the newest `keep`."""
    from gt_ext.train.lora import save_adapter

    final = checkpoints_dir(run_dir) / f"step-{state.step}"
    with atomic_dir(final) as tmp:
        save_adapter(model, tmp / ADAPTER_DIR)
        torch.save({"format": FORMAT, **asdict(state)}, tmp / STATE_FILE)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s", final)
    return final


def read_state(path: str | os.PathLike) -> TrainerState:
    """The TrainerState of a checkpoint folder (weights-only load); a one-line error when it is not one."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise GtExtError(f"{path}: not a checkpoint (no {STATE_FILE})")
    try:
        raw = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        # torch explains at length (with terminal colour codes) how to load it unsafely; the
        # user needs what was in the file, on one line.
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        bad = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        why = (f"it holds pickled code ({bad.group(1)}), which is never run" if bad
               else " ".join(text.split())[:160] or type(e).__name__)
        raise GtExtError(f"{f}: not a checkpoint this version can read safely: {why}; "
                         "start the run again without --resume") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise GtExtError(f"{f}: checkpoint format {raw.get('format') if isinstance(raw, dict) else '?'}, "
                         f"expected {FORMAT}")
    raw.pop("format")
    try:
        return TrainerState(**raw)
    except TypeError as e:
        raise GtExtError(f"{f}: malformed checkpoint ({e})") from None


def load(path: str | os.PathLike, model: Any) -> TrainerState:
    """Load the checkpoint's adapter weights into `model` and return its TrainerState. The caller
    restores optimizer, scheduler and data position; RNG states are restored here."""
    from gt_ext.train.lora import load_adapter_weights

    state = read_state(path)
    load_adapter_weights(model, Path(path) / ADAPTER_DIR)
    restore_rng(state.rng)
    return state
