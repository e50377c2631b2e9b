"""Small corpus exports in the CONTRACTS.md format, written by hand for the training tests."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

_TOPICS = ["polecat nux", "polecat slit", "refinery queue", "bead gt-12", "convoy c-7", "deacon patrol"]
_ACTIONS = ["nudged it", "escalated to the mayor", "cleaned up the zombie session", "marked it done", "left it alone"]


def _sft_record(i: int, role: str, task: str, rng: random.Random) -> dict:
    topic, action = rng.choice(_TOPICS), rng.choice(_ACTIONS)
    msgs = [
        {"role": "system", "content": f"You are the {role} of rig demo."},
        {"role": "user", "content": f"Status of {topic}? (case {i})"},
        {"role": "assistant", "content": '<tool_call>{"name": "Bash", "input": {"command": "gt peek"}}</tool_call>'},
        {"role": "tool", "content": f"{topic}: idle for {rng.randint(2, 90)} minutes"},
        {"role": "assistant", "content": f"{topic} was idle, so I {action}. " * rng.randint(1, 3)},
    ]
    rid = hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest()
    return {"id": rid, "role": role, "task": task, "messages": msgs,
            "provenance": {"source": "curated", "session": f"s{i}", "time": "2026-01-01T00:00:00Z"}}


def _dpo_record(i: int, role: str, task: str, rng: random.Random) -> dict:
    topic = rng.choice(_TOPICS)
    prompt = [{"role": "user", "content": f"{topic} has been idle for an hour. What now? ({i})"}]
    return {"id": f"dpo-{i}", "role": role, "task": task, "prompt": prompt,
            "chosen": f"I nudge {topic} and check again in five minutes.",
            "rejected": f"I delete {topic}'s worktree without asking.", "provenance": {"source": "curated"}}


def write_corpus(root: Path, role: str = "witness", tasks: tuple[str, ...] = ("patrol", "general"),
                 n_train: int = 24, n_val: int = 6, seed: int = 0) -> Path:
    """Write DIR/sft and DIR/dpo shards plus a manifest; returns DIR."""
    rng = random.Random(seed)
    files = {}
    for kind, make in (("sft", _sft_record), ("dpo", _dpo_record)):
        for task in tasks:
            for split, n in (("train", n_train), ("val", n_val)):
                p = root / kind / role / task / f"{split}.jsonl"
                p.parent.mkdir(parents=True, exist_ok=True)
                lines = [json.dumps(make(k, role, task, rng)) for k in range(n)]
                p.write_text("\n".join(lines) + "\n")
                files[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    corpus_hash = hashlib.sha256("".join(sorted(files.values())).encode()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"corpus_hash": corpus_hash, "files": files, "counts": {}}))
    return root
