"""Losses over `gt_ext.train.data` batches: SFT cross-entropy and DPO (sigmoid).

Public API (stable; the swarm loop builds on it):

    sft_loss_sum(model, batch) -> (sum of token NLL [scalar tensor], n_target_tokens: int)
    sft_loss(model, batch) -> mean NLL over assistant tokens
    sequence_logps(model, batch) -> [n_examples] summed log-prob of each example's target tokens
    per_example_sums(token_logps, example_ids, n) -> [n] the same reduction from given log-probs
    reference_logps(model, batch) -> same, no grad, LoRA adapters disabled (the reference policy)
    dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> (loss, metrics)
    dpo_batch_loss(model, batch, beta, ref=None) -> (loss, metrics)

Logits are computed only where the loss needs them: the decoder runs over all tokens, then the
LM head (576 x 49152 for SmolLM2, a fifth of the forward FLOPs) only at target positions.
`model` is a transformers causal LM or a PEFT model wrapping one.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from gt_ext.train.data import IGNORE


def split_model(model: Any) -> tuple[Any, Any]:
    """(decoder body, lm_head) of a causal LM, looking through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    return body, base.get_output_embeddings()


def hidden_states(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Last hidden states [B, T, H] under the batch's block-diagonal mask and per-example positions."""
    body, _ = split_model(model)
    device = next(body.parameters()).device
    out = body(
        input_ids=batch["input_ids"].to(device),
        position_ids=batch["position_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    )
    return out.last_hidden_state


def _target_logps(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target-token log p(target) [N] and the flat positions' example ids [N]."""
    _, head = split_model(model)
    h = hidden_states(model, batch)  # [B, T, H]
    targets = batch["targets"].to(h.device)
    sel = targets != IGNORE  # [B, T]
    logits = head(h[sel]).float()  # [N, V]: only the positions that carry loss
    tgt = targets[sel]  # [N]
    logp = -F.cross_entropy(logits, tgt, reduction="none")  # [N]
    return logp, batch["example_index"].to(h.device)[sel]


def sft_loss_sum(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Summed NLL over the batch's assistant tokens and their count (for exact accumulation)."""
    logp, _ = _target_logps(model, batch)
    return -logp.sum(), int(logp.numel())


def sft_loss(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Mean NLL over the batch's assistant tokens."""
    total, n = sft_loss_sum(model, batch)
    return total / max(n, 1)


def per_example_sums(logp: torch.Tensor, example_ids: torch.Tensor, n_examples: int) -> torch.Tensor:
    """Per-token log-probs [N] summed per example id -> [n_examples] (a pipeline's tail gives
    per-token log-probs; this is the same reduction as `sequence_logps`)."""
    out = torch.zeros(n_examples, dtype=logp.dtype, device=logp.device)
    return out.index_add(0, example_ids, logp)


def sequence_logps(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Summed target log-probs per example, [n_examples] (example order as in the batch)."""
    logp, ex = _target_logps(model, batch)
    return per_example_sums(logp, ex, batch["n_examples"])


def reference_logps(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """`sequence_logps` of the reference policy: the same model with its LoRA adapters disabled."""
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with torch.no_grad(), ctx:
        return sequence_logps(model, batch)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO: -log sigmoid(beta * ((pc - rc) - (pr - rr))), averaged over pairs."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    m, c, r = margin.detach(), chosen_reward.detach(), rejected_reward.detach()
    metrics = {
        "reward_acc": float((m > 0).float().mean()),
        "reward_margin": float(m.mean()),
        "chosen_reward": float(c.mean()),
        "rejected_reward": float(r.mean()),
    }
    return loss, metrics


def dpo_batch_loss(
    model: Any, batch: dict[str, Any], beta: float, ref: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss of a batch of pairs (examples 2k chosen, 2k+1 rejected). `ref`: precomputed
    reference log-probs in the same order, else computed now with adapters disabled."""
    if ref is None:
        ref = reference_logps(model, batch)
    pol = sequence_logps(model, batch)
    return dpo_loss(pol[0::2], pol[1::2], ref[0::2].to(pol), ref[1::2].to(pol), beta)
