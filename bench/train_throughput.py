"""LoRA SFT throughput on SmolLM2-135M: our trainer vs TRL's SFTTrainer, same data, one process.

    .venv/bin/python bench/train_throughput.py [--model smollm2-135m-instruct] [--examples 48] [--threads 2]

Data: the sample town's witness SFT split (gt_ext.corpus.sample_town), tokenized once through the
model's chat template; both trainers get exactly those token ids and the same assistant-token
mask (TRL via its `assistant_masks` column, so `labels` are built by TRL itself). Same LoRA
(r 8 on q_proj/v_proj), fp32, AdamW lr 2e-4, ~4 examples per optimizer step, one pass over the
same examples, no gradient checkpointing. TRL runs with its defaults otherwise (padded batches).

Ours: examples packed into rows (block-diagonal attention, no padding waste) and logits computed
only at assistant positions. Reported: real (non-padding) tokens/s over the whole pass, peak RSS
growth during each trainer's pass, and the ratio ours/TRL. Absolute numbers move with machine load;
the ratio is what this measures.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch


class PeakRSS:
    """Samples this process's RSS in a thread; `.peak_mb` above the level at start."""

    def __init__(self, every: float = 0.05):
        self.every, self.proc = every, psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def witness_items(tok, n: int, max_length: int):
    """Rendered witness SFT items from the sample town (train split), the first n."""
    from gt_ext.corpus.sample_town import generate, ingest_sessions
    from gt_ext.corpus.shards import write_shards
    from gt_ext.corpus.store import Store
    from gt_ext.train.data import load_items

    with tempfile.TemporaryDirectory() as d:
        st = Store.open(Path(d) / "c")
        ingest_sessions(st, generate(0, witness=60, per_role=2))
        write_shards(st, Path(d) / "out", val_pct=10)
        items, _ = load_items(Path(d) / "out", "sft", "witness", None, "train", tok, max_length, limit=n)
    return items


def run_ours(model_name: str, items, lr: float, per_step: int, pack_length: int) -> dict:
    """One pass with our pieces: packed rows, assistant-only logits, AdamW on the adapter."""
    from gt_ext.models import load_model
    from gt_ext.train.config import LoraSettings
    from gt_ext.train.data import BatchLoader, batch_tokens
    from gt_ext.train.lora import add_lora, trainable_parameters
    from gt_ext.train.losses import sft_loss_sum

    model, tok = load_model(model_name)
    torch.manual_seed(0)
    model = add_lora(model, LoraSettings(r=8, alpha=16, targets=["q_proj", "v_proj"]))
    model.train()
    opt = torch.optim.AdamW(trainable_parameters(model), lr=lr)
    # Rows of at most 512 tokens: the block-diagonal mask does not skip masked blocks in CPU SDPA, so
    # longer rows pay for attention they throw away; several rows per step keep ~per_step examples.
    row = min(pack_length, 512)
    loader = BatchLoader(items, max(1, round(pack_length / row)), True, row, 0, tok.pad_token_id)
    n_batches = loader.batches_per_epoch()
    tokens, losses = 0, []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for _ in range(n_batches):
            b = loader.next_batch()
            s, n = sft_loss_sum(model, b)
            (s / n).backward()
            torch.nn.utils.clip_grad_norm_(trainable_parameters(model), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += batch_tokens(b)
            losses.append(float(s) / n)
        dt = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt, "steps": n_batches,
            "peak_rss_mb": mem.peak_mb, "first_loss": losses[0], "last_loss": losses[-1]}


def run_trl(model_name: str, items, lr: float, per_step: int) -> dict:
    """One pass with TRL's SFTTrainer over the same token ids and assistant masks."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from gt_ext.export.export import plain_model
    from gt_ext.models import load_model
    from gt_ext.train.data import IGNORE

    model, tok = load_model(model_name)
    model = plain_model(model)  # the cached base config names its GGUF source; TRL then refuses to train it
    rows = []
    for it in items:
        ex = it.examples[0]
        # token t is an answer token when the position before it predicts it
        mask = [0] + [int(t != IGNORE) for t in ex.targets[:-1]]
        rows.append({"input_ids": ex.input_ids, "assistant_masks": mask})
    ds = Dataset.from_list(rows)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, per_device_train_batch_size=per_step, num_train_epochs=1, learning_rate=lr,
            lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, gradient_checkpointing=False,
            max_length=None, packing=False, report_to=[], save_strategy="no", logging_strategy="no",
            use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0, shuffle_dataset=False, seed=0,
            disable_tqdm=True,
        )
        peft_cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            res = trainer.train()
            dt = time.perf_counter() - t0
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt, "steps": res.global_step,
            "peak_rss_mb": mem.peak_mb, "train_loss": res.training_loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--per-step", type=int, default=4, help="examples per optimizer step (TRL batch size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)

    from gt_ext.models import load_tokenizer

    tok = load_tokenizer(args.model)
    items = witness_items(tok, args.examples, 1024)
    mean_len = sum(len(i) for i in items) / len(items)
    # Rows hold about `per_step` examples, so both trainers take the same number of optimizer steps.
    pack_length = int(mean_len * args.per_step)
    print(f"data: {len(items)} witness examples, mean {mean_len:.0f} tokens, "
          f"{sum(i.examples[0].n_targets for i in items) / len(items):.0f} assistant tokens each; "
          f"model {args.model}, {args.threads} threads")

    trl = run_trl(args.model, items, args.lr, args.per_step)
    gc.collect()
    ours = run_ours(args.model, items, args.lr, args.per_step, pack_length)
    for name, r in (("TRL SFTTrainer", trl), ("gt-ext trainer", ours)):
        print(f"{name:15s} {r['tokens_per_s']:8.1f} tokens/s  {r['seconds']:7.1f} s  {r['steps']:3d} steps  "
              f"peak +{r['peak_rss_mb']:.0f} MiB")
    print(f"ratio (ours / TRL tokens/s): {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x   (goal >= 2x)")


if __name__ == "__main__":
    main()
