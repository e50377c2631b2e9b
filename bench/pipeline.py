"""Pipeline benchmark: SmolLM2-135M over 3 local node0 stages against one process, same batch.

    .venv/bin/python bench/pipeline.py [--model smollm2-135m-instruct] [--steps 4] [--batch 2]
                                       [--pack 512] [--rate 100]

Prints, side by side:
* training tokens/s: one process (`gt-ext train`'s code) vs the pipeline (`gt-ext train --backend
  pipeline --stages 3`: three real stage servers on 127.0.0.1, their LoRA, the trainer in this
  process), at the same micro-batch and steps, and the ratio; the first step of each is warm-up and
  not counted;
* activation bytes per token per hop as sent (activations + positions + example ids, float32 and
  int64 as serialized by hivemind), without and with node0's activation compression (rate --rate,
  on a subspace version of the model: `gt-ext pipeline subspace`), and the ratio;
* tokens/s with compression;
* decode ms/token (greedy, batch 1, after a prompt of --prompt tokens): one process (transformers'
  model with a KV cache, the computation the stages split) vs generation through the 3 stages
  (`gt_ext.pipeline.inference`: a stream per stage, KV caches at the stages, sampling here), measured
  token by token in turn (a pipeline step, then the same step in one process), the medians, their
  ratio, and the overhead per hop (pipeline minus one process, divided by the 3 stage round trips;
  target <= 5 ms on loopback); then what a pipeline step is made of: the stages' layers (the
  compute time each stage reports, next to one process's; and their CPU time, which the machine's
  load does not stretch, next to one process's), and the transport per hop (wall time
  minus that compute, divided by 3), split into the stage processes' own handling (decoding the
  message, the hand-over to the compute thread and back) and the messaging (p2p daemons, event
  loops, the client). On a loaded machine the OS shares the cores unevenly between 1 and 4
  processes (a process that sleeps between steps gets the core sooner when it wakes), so the
  compute figures there differ by more than the code does.

The stages and the trainer share this machine's cores (one stage computes at a time; a stage's
backward uses the graph its forward kept). Absolute numbers move with the load of the machine (printed); the
ratios are what this measures. `--only decode` or `--only train` runs one half.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def write_corpus(root: Path, n_train: int = 24, n_val: int = 4) -> Path:
    """A witness corpus of longer conversations (so packed rows fill up)."""
    import random

    rng = random.Random(0)
    verbs, things = ["check", "nudge", "close", "review", "escalate"], ["polecat", "bead", "convoy", "rig", "hook"]
    d = root / "sft" / "witness" / "patrol"
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                turns = []
                for k in range(4):
                    v, t = rng.choice(verbs), rng.choice(things)
                    turns += [{"role": "user", "content": f"Patrol {i}.{k}: please {v} the {t} {rng.randint(1, 99)}."},
                              {"role": "assistant", "content": f"I will {v} the {t}: `gt peek {t}` shows it idle "
                                                               f"for {rng.randint(2, 90)} minutes, so I {v} it."}]
                f.write(json.dumps({"id": f"{split}{i}", "role": "witness", "task": "patrol", "messages": turns,
                                    "provenance": {"source": "sample"}}) + "\n")
    (root / "manifest.json").write_text(json.dumps({"corpus_hash": "bench", "counts": {}, "files": {}}))
    return root


def steady_tokens_per_s(run_dir: Path) -> tuple[float, float]:
    """(mean tokens/s of the steps after the first, mean hop bytes per token) from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "tokens_per_s" in r][1:]
    tokens = sum(r["tokens"] for r in steps)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in steps)
    hop = [r["hop_bytes_per_token"] for r in steps if "hop_bytes_per_token" in r]
    return tokens / seconds, (sum(hop) / len(hop) if hop else float("nan"))


def decode_bench(base: Path, tmp: Path, tokens: int, rounds: int, prompt_len: int,
                 threads: int = 1) -> dict[str, float]:
    """Median decode ms/token through 3 local stages and in one process, token by token in turn."""
    import statistics

    import torch
    import yaml

    from gt_ext.models import load_model
    from gt_ext.pipeline.inference import PipelineInference
    from gt_ext.pipeline.stage import model_fingerprint
    from gt_ext.pipeline.trainer import LocalStages, PipelineSettings
    from gt_ext.swarm.auth import SwarmKey
    from gt_ext.swarm.dht import start_dht, visible_addrs
    from gt_ext.train.config import config_to_dict, load_config

    torch.set_num_threads(threads)  # the stages run as many each
    run, key, key_file = "bench-decode", SwarmKey.generate(), tmp / "decode.key"
    key.save(key_file)
    cfg_file = tmp / "decode.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(load_config(None, [f"base_model={base}", f"threads={threads}"]))))
    boot = start_dht([], None, key, run_id=run, username="boot")
    stages = LocalStages(3, run, tmp / "decode", cfg_file, key_file, visible_addrs(boot),
                         PipelineSettings(node0=Path(os.environ["NODE0_PATH"])))
    client = None
    try:
        client = PipelineInference(run, visible_addrs(boot), key, base_hash=model_fingerprint(base), route_timeout=600)
        model, _ = load_model(str(base))
        model.eval()
        prompt = torch.randint(100, 20000, (1, prompt_len), generator=torch.Generator().manual_seed(0))

        # Per token, one pipeline step then one single-process step: both see the same load (on a
        # busy machine the load moves within seconds; rounds of 32 tokens each were not comparable).
        # (pipeline, one process, stage compute, stage total, stage compute CPU, one process CPU)
        rows: list[tuple[float, ...]] = []
        agree: list[bool] = []  # greedy token of the pipeline == one process's, per step

        @torch.inference_mode()
        def one_process_step(ids: torch.Tensor, cache: Any) -> torch.Tensor:
            return model(ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

        def round_of_tokens(keep: bool) -> None:
            from transformers import DynamicCache

            session, cache = client.session(), DynamicCache(config=model.config)
            logits, ref = client.run(session.step(prompt)), one_process_step(prompt, cache)
            for _ in range(tokens):
                t0 = time.perf_counter()
                logits = client.run(session.step(logits.argmax().view(1, 1)))
                t1, cpu1 = time.perf_counter(), time.thread_time()
                ref = one_process_step(ref.argmax(-1).view(1, 1), cache)
                t2, cpu2 = time.perf_counter(), time.thread_time()
                agree.append(int(logits.argmax()) == int(ref.argmax()))  # the same computation, timed
                if keep:
                    rows.append((t1 - t0, t2 - t1, session.compute_s, session.stage_s, session.compute_cpu_s,
                                 cpu2 - cpu1))
            client.run(session.close())

        round_of_tokens(keep=False)  # warm-up
        for _ in range(rounds):
            round_of_tokens(keep=True)

        def median_ms(i: int) -> float:
            return 1e3 * statistics.median(r[i] for r in rows)

        return {"pipeline_ms": median_ms(0), "single_ms": median_ms(1), "compute_ms": median_ms(2),
                "stage_ms": median_ms(3), "compute_cpu_ms": median_ms(4), "single_cpu_ms": median_ms(5), "hops": len(client.spans), "agree": sum(agree) / len(agree),
                # per token, then the median: the parts of one step add up to its wall time
                "transport_ms": 1e3 * statistics.median(r[0] - r[2] for r in rows),
                "in_stage_ms": 1e3 * statistics.median(r[3] - r[2] for r in rows),
                "messaging_ms": 1e3 * statistics.median(r[0] - r[3] for r in rows)}
    finally:
        if client is not None:
            client.close()
        stages.close()
        boot.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--pack", type=int, default=512)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["all", "train", "decode"], default="all")
    ap.add_argument("--decode-tokens", type=int, default=32, help="tokens per decode round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating decode rounds")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens before decoding")
    ap.add_argument("--decode-threads", type=int, default=1,
                    help="torch threads of each stage and of the one process when decoding")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("NODE0_PATH", str(REPO.parent / "shared" / "upstream" / "node0"))

    from gt_ext.models import resolve_model_dir

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    base = resolve_model_dir(args.model)
    load = os.getloadavg()
    if args.only in ("all", "decode"):
        print(f"model {args.model}, decode: {args.rounds} x {args.decode_tokens} tokens after a {args.prompt}-token "
              f"prompt, 3 stages, {args.decode_threads} thread(s) each", file=sys.stderr)
        d = decode_bench(base, tmp, args.decode_tokens, args.rounds, args.prompt, args.decode_threads)
        per_hop = (d["pipeline_ms"] - d["single_ms"]) / d["hops"]
        print(f"decode ms/token   one process {d['single_ms']:7.1f}   pipeline {d['pipeline_ms']:7.1f}   "
              f"ratio {d['pipeline_ms'] / d['single_ms']:.2f}x   overhead per hop {per_hop:.1f} ms (target <= 5 ms)")
        print(f"decode greedy tokens equal to one process's on {100 * d['agree']:.0f}% of the steps")
        print(f"decode compute    stages' layers {d['compute_ms']:7.1f} ms/token (the 3 together; one process "
              f"{d['single_ms']:.1f}); CPU time {d['compute_cpu_ms']:.1f} vs one process {d['single_cpu_ms']:.1f}: "
              f"ratio {d['compute_cpu_ms'] / d['single_cpu_ms']:.2f}x (the load does not stretch CPU time)")
        print(f"decode transport  {d['transport_ms']:.1f} ms/token outside the stages' layers = "
              f"{d['transport_ms'] / d['hops']:.1f} ms per hop: in the stage processes "
              f"{d['in_stage_ms'] / d['hops']:.1f} (decoding, thread hand-over), messaging "
              f"{d['messaging_ms'] / d['hops']:.1f} (p2p daemons, event loops, client)")
    if args.only in ("all", "train"):
        train_bench(args, tmp, base)
    print(f"machine load (1-min average) at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}, "
          f"on {os.cpu_count()} cores")
    return 0


def train_bench(args: argparse.Namespace, tmp: Path, base: Path) -> None:
    """Training tokens/s and activation bytes per hop, one process vs 3 stages (see module doc)."""
    from gt_ext.pipeline.subspace import SUBSPACE_FILE, make_subspace_model
    from gt_ext.pipeline.trainer import pipeline_settings, run_pipeline_training
    from gt_ext.train.run import prepare, run_training

    corpus = write_corpus(tmp / "corpus")
    sets = [f"max_steps={args.steps}", f"data.batch_size={args.batch}", f"data.pack_length={args.pack}",
            f"data.max_length={args.pack}", "eval_every=0", "checkpoint_every=0", f"threads={args.threads}",
            "lora.r=8", "attention=dense"]

    def one_process(model: Path, name: str) -> float:
        out = tmp / name
        run_training(prepare("witness", corpus, None, None, [f"base_model={model}", *sets]), out, progress=False)
        return steady_tokens_per_s(out)[0]

    def pipeline(model: Path, name: str, rate: int | None = None) -> tuple[float, float]:
        out = tmp / name
        p = prepare("witness", corpus, None, None, [f"base_model={model}", *sets])
        s = pipeline_settings(out, f"bench-{name}", 3, [], None, rate, (model / SUBSPACE_FILE) if rate else None,
                              Path(os.environ["NODE0_PATH"]))
        t0 = time.monotonic()
        final = run_pipeline_training(p, out, s, progress=False)
        print(f"  {name}: {final['status']} in {time.monotonic() - t0:.0f} s (stage start-up included)", file=sys.stderr)
        return steady_tokens_per_s(out)

    print(f"model {args.model}, {args.steps} steps of {args.batch} x {args.pack}-token rows, 3 stages", file=sys.stderr)
    single = one_process(base, "single")
    pipe_tps, pipe_bytes = pipeline(base, "pipe")
    sub = make_subspace_model(base, tmp / "subspace-model", rate=args.rate)
    comp_tps, comp_bytes = pipeline(sub, "pipec", rate=args.rate)
    print(f"training tokens/s   one process {single:8.1f}   pipeline {pipe_tps:8.1f}   ratio {pipe_tps / single:.2f}x"
          f"   (target >= 0.5x)")
    print(f"training tokens/s   pipeline with compression (rate {args.rate}) {comp_tps:8.1f}   "
          f"ratio to one process {comp_tps / single:.2f}x")
    print(f"activation bytes per token per hop   uncompressed {pipe_bytes:8.1f}   compressed {comp_bytes:8.1f}   "
          f"ratio {pipe_bytes / comp_bytes:.1f}x smaller")


if __name__ == "__main__":
    sys.exit(main())
