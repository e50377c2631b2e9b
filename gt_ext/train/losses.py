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
`model` is a transformers causal LM or a PEFT model wrapping one. How a batch reaches the model
(flat packed row or padded rows with a dense mask) follows the model's attention backend
(`gt_ext.train.attention`); `model_inputs` builds it on the host, so a loss never waits for the
device.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gt_ext.train.attention import model_backend
from gt_ext.train.data import IGNORE, dense_mask


def split_model(model: Any) -> tuple[Any, Any]:
    """(decoder body, lm_head) of a causal LM, looking through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    return body, base.get_output_embeddings()


@dataclass
class ModelInputs:
    """A batch laid out for the model on its device (see `model_inputs`)."""

    kwargs: dict[str, Any]  # keyword arguments of the decoder body's call
    select: torch.Tensor  # [M] long: rows of the flattened hidden states [B*T, H] that carry loss
    targets: torch.Tensor  # [M] long: the token each selected position predicts
    examples: torch.Tensor  # [M] long: the example each selected position belongs to
    n_targets: int


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without a sync: pinned memory and a non-blocking copy on CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def model_inputs(batch: dict[str, Any], device: torch.device, backend: str = "dense") -> ModelInputs:
    """Lay a batch out for the model. Everything is computed on the host from the batch's CPU
    tensors and copied once, so nothing waits for the device (no boolean indexing there).

    backend "dense": the padded rows [B, T] with `data.dense_mask` [B, 1, T, T].
    backend "varlen"/"segments": the real tokens as one flat row [1, N] plus the example
    boundaries for `gt_ext.train.attention` (no mask, no padding).
    """
    ex_index = batch["example_index"]
    if backend == "dense":
        ids, pos, tgt, ex = batch["input_ids"], batch["position_ids"], batch["targets"], ex_index
        kwargs = {"input_ids": _to(ids, device), "position_ids": _to(pos, device),
                  "attention_mask": _to(dense_mask(ex_index), device)}
        tgt, ex = tgt.flatten(), ex.flatten()
    else:
        real = ex_index >= 0  # [B, T]; examples are numbered in row order, so the flat order keeps them whole
        ids, pos, tgt, ex = batch["input_ids"][real], batch["position_ids"][real], batch["targets"][real], ex_index[real]
        lens = torch.bincount(ex, minlength=int(batch["n_examples"]))  # [n_examples] tokens per example
        cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        kwargs = {"input_ids": _to(ids[None], device), "position_ids": _to(pos[None], device),
                  "gt_backend": backend, "gt_cu_seqlens": _to(cu, device), "gt_max_seqlen": int(lens.max())}
        if backend == "segments":  # only the per-example loop needs them as Python ints
            kwargs["gt_seq_lens"] = tuple(lens.tolist())
    sel = (tgt != IGNORE).nonzero().squeeze(1)  # [M] on the host
    return ModelInputs(kwargs, _to(sel, device), _to(tgt[sel], device), _to(ex[sel], device), int(sel.numel()))


def autocast(model: Any, device: torch.device) -> Any:
    """bf16 autocast for models whose weights are bf16 (`lora.load_base_for_training` marks them):
    the fp32 LoRA weights then run their matmuls in bf16 too; log-softmax and the loss stay fp32."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = getattr(base, "_gt_autocast", None)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def hidden_states(model: Any, batch: dict[str, Any], inputs: ModelInputs | None = None) -> torch.Tensor:
    """Last hidden states: [B, T, H] (dense rows) or [1, N, H] (flat packed row), per the model's
    attention backend (`gt_ext.train.attention.install`)."""
    body, _ = split_model(model)
    device = next(body.parameters()).device
    if inputs is None:
        inputs = model_inputs(batch, device, model_backend(model))
    with autocast(model, device):
        out = body(**inputs.kwargs, use_cache=False)
    return out.last_hidden_state


def _target_logps(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target-token log p(target) [M] and the example each belongs to [M]."""
    body, head = split_model(model)
    device = next(body.parameters()).device
    inputs = model_inputs(batch, device, model_backend(model))
    h = hidden_states(model, batch, inputs)  # [B, T, H] or [1, N, H]
    with autocast(model, device):
        logits = head(h.flatten(0, 1).index_select(0, inputs.select))  # [M, V]: only positions that carry loss
    logp = -F.cross_entropy(logits.float(), inputs.targets, reduction="none")  # [M]
    return logp, inputs.examples


def sft_loss_sum(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Summed NLL over the batch's assistant tokens and their count (for exact accumulation).
    The count comes from the host-side batch: no device sync."""
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sigmoid DPO: -log sigmoid(beta * ((pc - rc) - (pr - rr))), averaged over pairs."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    m, c, r = margin.detach(), chosen_reward.detach(), rejected_reward.detach()
    metrics = {
        "reward_acc": (m > 0).float().mean(),
        "reward_margin": m.mean(),
        "chosen_reward": c.mean(),
        "rejected_reward": r.mean(),
    }  # device scalars: reading them waits for the device, so the loop reads them once a step
    return loss, metrics


def dpo_batch_loss(
    model: Any, batch: dict[str, Any], beta: float, ref: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss of a batch of pairs (examples 2k chosen, 2k+1 rejected). `ref`: precomputed
    reference log-probs in the same order, else computed now with adapters disabled."""
    if ref is None:
        ref = reference_logps(model, batch)
    pol = sequence_logps(model, batch)
    return dpo_loss(pol[0::2], pol[1::2], ref[0::2].to(pol), ref[1::2].to(pol), beta)
