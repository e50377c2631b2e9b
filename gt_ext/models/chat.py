"""One-shot greedy chat with a base model (for `gt-ext models generate` and smoke checks)."""

from __future__ import annotations

from typing import Any


def chat_once(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 64,
              system: str | None = None, streamer: Any = None) -> tuple[str, int]:
    """Greedy-decode an answer to one user `prompt` with the model's own chat template.

    Returns (answer text, number of new tokens).
    """
    import torch

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    input_ids = enc["input_ids"]  # [1, prompt_len]
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=enc.get("attention_mask"),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                             streamer=streamer)
    new = out[0, input_ids.shape[1]:]  # [new_len]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), int(new.shape[0])
