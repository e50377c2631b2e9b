"""Swarm benchmark: bytes on the wire per optimizer step, and time per step, in one run.

    .venv/bin/python bench/swarm.py [--model smollm2-135m-instruct] [--steps 4] [--batch 2] [--rank 2]

1. Bytes per optimizer step (one all-reduce round, per peer, float32, 2 peers): LoRA gradients
   only, LoRA with PowerSGD (rank --rank), and the full model's gradients. Counted with the same
   rule hivemind's butterfly all-reduce follows (each peer sends 2 * (n-1)/n of its vector;
   PowerSGD sends P and Q of each compressible matrix), on the real model's parameter shapes.
2. Time per global step: 2 swarm peers (real hivemind on 127.0.0.1, lockstep, batch B each)
   against one plain process (batch 2B, same total batch, same steps), both on the same
   examples. The swarm pays matchmaking and all-reduce; the ratio shows what that costs here.

Absolute times move with machine load; the ratios are what this measures.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path


def write_corpus(root: Path, n_train: int = 32, n_val: int = 8) -> Path:
    """A small witness corpus in the exported layout."""
    rng = random.Random(0)
    verbs, things = ["check", "nudge", "close", "review"], ["polecat", "bead", "convoy", "rig"]
    for split, n in (("train", n_train), ("val", n_val)):
        d = root / "sft" / "witness" / "patrol"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                v, t = rng.choice(verbs), rng.choice(things)
                msgs = [{"role": "user", "content": f"Please {v} the {t} {i}."},
                        {"role": "assistant", "content": f"I will {v} the {t} now: bd list --json."}]
                f.write(json.dumps({"id": f"{split}{i}", "role": "witness", "task": "patrol", "messages": msgs,
                                    "provenance": {"source": "sample"}}) + "\n")
    return root


def bytes_table(model_name: str, rank: int) -> dict[str, int]:
    from gt_ext.swarm.optim import bytes_per_round
    from gt_ext.train.config import load_config
    from gt_ext.train.lora import load_base_for_training, trainable_parameters

    cfg = load_config(None, [f"base_model={model_name}"])
    model, _ = load_base_for_training(cfg)
    lora = trainable_parameters(model)
    full = list(model.parameters())
    return {
        "lora_params": sum(p.numel() for p in lora),
        "total_params": sum(p.numel() for p in full),
        "lora": bytes_per_round(lora, 2),
        "lora_powersgd": bytes_per_round(lora, 2, rank),
        "full": bytes_per_round(full, 2),
    }


def _sets(model: str, steps: int, batch: int) -> list[str]:
    return [f"base_model={model}", f"max_steps={steps}", f"data.batch_size={batch}", "data.pack=false",
            "data.max_length=64", "threads=1", "optim.warmup_steps=0", "optim.grad_clip=0",
            "eval_every=0", "checkpoint_every=0"]


def _peer(out: Path, corpus: Path, key_path: Path, sets: list[str], settings: dict) -> None:
    os.setsid()
    fd = os.open(out.parent / f"{out.name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 1
    try:
        from gt_ext.swarm.auth import SwarmKey
        from gt_ext.swarm.peer import SwarmSettings, run_peer
        from gt_ext.train.config import load_config

        run_peer(corpus, "witness", out, load_config(None, sets), SwarmSettings(**settings), SwarmKey.load(key_path))
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def swarm_time_per_step(corpus: Path, tmp: Path, model: str, steps: int, batch: int) -> float:
    """Seconds per global step of 2 lockstep peers (steps 2..N, after the first round)."""
    from gt_ext.swarm.auth import SwarmKey

    key = tmp / "swarm.key"
    SwarmKey.generate().save(key)
    sets = _sets(model, steps, batch)
    common = dict(target_batch_size=2 * batch, lockstep=True, min_peers=2, group_size=2, wait_for_peers_s=300,
                  matchmaking_time=5.0, averaging_timeout=60.0)
    ctx = mp.get_context("fork")
    procs = []
    try:
        a = ctx.Process(target=_peer, args=(tmp / "a", corpus, key, sets, dict(common, shard=(0, 2))))
        a.start()
        procs.append(a)
        deadline = time.monotonic() + 300
        while not (tmp / "a" / "swarm.json").is_file():
            if time.monotonic() > deadline or a.exitcode is not None:
                raise SystemExit(f"first peer did not start: see {tmp / 'a.log'}")
            time.sleep(0.2)
        addrs = json.loads((tmp / "a" / "swarm.json").read_text())["addrs"]
        b = ctx.Process(target=_peer, args=(tmp / "b", corpus, key, sets,
                                            dict(common, shard=(1, 2), initial_peers=addrs)))
        b.start()
        procs.append(b)
        for p in procs:
            p.join(900)
            if p.exitcode != 0:
                raise SystemExit(f"peer failed: see {tmp}/*.log")
    finally:
        for p in procs:
            if p.exitcode is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.join(10)
    rows = [json.loads(x) for x in (tmp / "a" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / max(len(rows) - 1, 1)


def local_time_per_step(corpus: Path, model: str, steps: int, batch: int) -> float:
    """Seconds per step of one plain process with batch 2B (steps 2..N), same loss and optimizer."""
    import torch

    from gt_ext.train.config import load_config
    from gt_ext.train.data import BatchLoader, load_items
    from gt_ext.train.lora import load_base_for_training, trainable_parameters
    from gt_ext.train.losses import sft_loss

    cfg = load_config(None, _sets(model, steps, 2 * batch))
    torch.set_num_threads(1)  # each swarm peer uses one thread too
    m, tok = load_base_for_training(cfg)
    items, _ = load_items(corpus, "sft", "witness", None, "train", tok, cfg.data.max_length)
    loader = BatchLoader(items, 2 * batch, False, cfg.data.pack_length, cfg.data.seed, tok.pad_token_id)
    opt = torch.optim.AdamW(trainable_parameters(m), lr=cfg.optim.lr, weight_decay=0.0)
    m.train()
    marks = []
    for _ in range(steps):
        sft_loss(m, loader.next_batch()).backward()
        opt.step()
        opt.zero_grad()
        marks.append(time.perf_counter())
    return (marks[-1] - marks[0]) / max(steps - 1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2, help="rows per peer per step (B)")
    ap.add_argument("--rank", type=int, default=2, help="PowerSGD rank")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    b = bytes_table(args.model, args.rank)
    mb = 2**20
    print(f"model {args.model}: {b['total_params']:,} parameters, LoRA {b['lora_params']:,} trainable")
    print("bytes per optimizer step, per peer, 2 peers (one all-reduce round, float32):")
    print(f"  full-model gradients      {b['full'] / mb:10.2f} MiB")
    print(f"  LoRA gradients            {b['lora'] / mb:10.3f} MiB   ratio full/LoRA = {b['full'] / b['lora']:.0f}x")
    print(f"  LoRA + PowerSGD rank {args.rank}    {b['lora_powersgd'] / mb:10.3f} MiB   "
          f"ratio full/LoRA+PowerSGD = {b['full'] / b['lora_powersgd']:.0f}x")

    with tempfile.TemporaryDirectory(prefix="bench-swarm-") as d:
        tmp = Path(d)
        corpus = write_corpus(tmp / "corpus")
        t_local = local_time_per_step(corpus, args.model, args.steps, args.batch)
        t_swarm = swarm_time_per_step(corpus, tmp, args.model, args.steps, args.batch)
    print(f"time per step, total batch {2 * args.batch}: one process {t_local:.2f} s, "
          f"2 swarm peers (batch {args.batch} each) {t_swarm:.2f} s, ratio swarm/local = {t_swarm / t_local:.2f}x")
    print(json.dumps({"bytes": b, "time_per_step_s": {"local": t_local, "swarm_2_peers": t_swarm},
                      "ratios": {"full_over_lora": b["full"] / b["lora"],
                                 "full_over_lora_powersgd": b["full"] / b["lora_powersgd"],
                                 "swarm_over_local_time": t_swarm / t_local}}))


if __name__ == "__main__":
    main()
