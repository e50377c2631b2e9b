"""Pick the next token from logits: repetition penalty, temperature, top-k, top-p, seeded draws."""

from __future__ import annotations

import torch

from gt_ext.serve.params import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as transformers does): divide positive, multiply negative logits of seen ids.

    logits: [V]; seen: 1-D tensor of token ids already in the context.
    """
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    logits = logits.clone()
    vals = logits[seen]
    logits[seen] = torch.where(vals < 0, vals * penalty, vals / penalty)
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with mass >= top_p. [V] -> [V]."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor, generator: torch.Generator | None
) -> int:
    """Choose one token id from `logits` [V] for one sequence whose ids so far are `seen`."""
    logits = apply_repetition_penalty(logits.float(), seen, float(params.repetition_penalty))
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / float(params.temperature)
    logits = filter_top_k_top_p(logits, int(params.top_k), float(params.top_p))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
