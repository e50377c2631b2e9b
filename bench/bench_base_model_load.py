"""Loading SmolLM2-135M-Instruct: our cached safetensors folder vs transformers' GGUF loader.

Baseline: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, which dequantizes the Q4_1
GGUF on every load. Ours: `gt_ext.models.load_model`, which does that once and then reloads the
cached HF folder. Both run in this process; the script checks they are the same model (greedy
next-token agreement on a prompt) and prints the load times and the ratio.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from gt_ext.models.base import SMOLLM2, load_model, resolve_model_dir, smollm2_gguf_path

    torch.set_num_threads(2)
    resolve_model_dir(SMOLLM2)  # make sure the cache exists (the one-time cost is not a load)
    t0 = time.perf_counter()
    ours, tok = load_model(SMOLLM2)
    t_ours = time.perf_counter() - t0

    gguf = smollm2_gguf_path()
    t0 = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    t_base = time.perf_counter() - t0

    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]  # [1, T]
    with torch.inference_mode():
        a = ours(ids).logits[0]  # [T, vocab]
        b = base(ids).logits[0]
    agree = int((a.argmax(-1) == b.argmax(-1)).sum())
    diff = float((a - b).abs().max())
    print(f"smollm2 load: transformers GGUF {t_base:.2f} s, gt_ext cache {t_ours:.2f} s; "
          f"ratio baseline/ours = {t_base / t_ours:.1f}x faster; "
          f"top-1 agreement {agree}/{ids.shape[1]}, max |logit diff| {diff:.2e}")
    return 0 if agree == ids.shape[1] else 1


if __name__ == "__main__":
    sys.exit(main())
