"""Does the sample town teach a witness anything? Train a small LoRA on the sample town's witness
SFT split and compare held-out loss (assistant tokens only) before and after, in one process.

    .venv/bin/python bench/witness_lora.py [--model smollm2-135m-instruct] [--steps 40]

Also reports how often greedy decoding picks the right action on held-out JSON decisions
(base vs adapted), the shape the witness evals ask for.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from gt_ext.corpus.export import export_corpus
from gt_ext.corpus.sample_town import generate, ingest_sessions
from gt_ext.corpus.store import Store
from gt_ext.models import load_model


def encode(tok, messages, max_len):
    """Token ids and labels (-100 except on assistant turns) of one chat; shapes [T]."""
    ids, labels = [], []
    for i, m in enumerate(messages):
        prefix = tok.apply_chat_template(messages[:i], tokenize=False) if i else ""
        full = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        piece = tok(full[len(prefix):], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if m["role"] == "assistant" else [-100] * len(piece)
    return ids[:max_len], labels[:max_len]


def loss_on(model, batch):
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for ids, labels in batch:
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            k = sum(1 for x in labels[1:] if x != -100)
            tot += out.loss.item() * k
            n += k
    return tot / max(n, 1)


def action_acc(model, tok, decisions):
    ok = 0
    for msgs in decisions:
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
        want = json.loads(msgs[-1]["content"])["action"]
        ok += f'"action": "{want}"' in text
    return ok / max(len(decisions), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--max-len", type=int, default=320)
    ap.add_argument("--eval-decisions", type=int, default=8)
    ap.add_argument("--val", type=int, default=16, help="held-out chats to score")
    args = ap.parse_args()
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model

    with tempfile.TemporaryDirectory() as d:
        st = Store.open(Path(d) / "c")
        ingest_sessions(st, generate(0, witness=60, per_role=2))
        export_corpus(st, Path(d) / "out", val_pct=20)
        read = lambda s: [json.loads(x) for x in (Path(d) / "out" / f"sft/witness/patrol/{s}.jsonl").read_text().splitlines()]  # noqa: E731
        train, val = read("train"), read("val")
    model, tok = load_model(args.model)
    tr = [encode(tok, r["messages"], args.max_len) for r in train]
    va = [encode(tok, r["messages"], args.max_len) for r in val[: args.val]]
    decisions = [r["messages"] for r in val if r["messages"][-1]["content"].startswith("{")][: args.eval_decisions]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    base_loss = loss_on(model, va)
    base_acc = action_acc(model, tok, decisions)
    log(f"base: val loss {base_loss:.4f}, decision accuracy {base_acc:.2f}")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rng = random.Random(0)
    t0 = time.perf_counter()
    model.train()
    for step in range(args.steps):
        ids, labels = rng.choice(tr)
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0:
            log(f"step {step} loss {loss.item():.4f}")
    dt = time.perf_counter() - t0
    res = {"train": len(tr), "val": len(va), "steps": args.steps, "train_s": round(dt, 1),
           "val_loss_base": round(base_loss, 4), "val_loss_lora": round(loss_on(model, va), 4),
           "decision_acc_base": base_acc, "decision_acc_lora": action_acc(model, tok, decisions),
           "decisions": len(decisions)}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
