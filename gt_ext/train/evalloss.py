"""A model's loss on conversations it was not trained on: the same number the trainer reports as
validation loss (token-weighted mean NLL over assistant tokens), for any model reference.

    loss, n, tokens = mean_loss("witness:2", [messages, ...], max_length=1024)

The model is loaded as `gt_ext.models.refs.resolve` says (a merged export as is, else the base with
its adapter stack merged in), in eval mode, without gradients.
"""

from __future__ import annotations

import logging
from typing import Any

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)


def load_for_loss(model_ref: str, town: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of `model_ref` with its adapters merged, ready for `losses.sft_loss_sum`."""
    from gt_ext.models import load_model
    from gt_ext.models.refs import resolve
    from gt_ext.train.lora import apply_role_adapter

    name, adapters = resolve(model_ref, town).torch_weights()
    model, tok = load_model(name)
    for folder, weight in adapters:
        if weight != 1.0:
            raise GtExtError(f"{model_ref}: adapter {folder} has weight {weight}; the loss is measured at 1.0 only")
        model = apply_role_adapter(model, folder)
    model.eval()
    return model, tok


def mean_loss(model_ref: str, conversations: list[list[dict[str, str]]], max_length: int = 1024,
              batch_size: int = 4, town: Any = None, model: Any = None, tokenizer: Any = None) -> tuple[float | None, int, int]:
    """(token-weighted mean NLL, conversations scored, assistant tokens) of a model on
    `conversations`; (None, 0, 0) when none has an assistant token."""
    import torch

    from gt_ext.train.data import Item, collate, render_chat
    from gt_ext.train.losses import sft_loss_sum

    if model is None or tokenizer is None:
        model, tokenizer = load_for_loss(model_ref, town)
    items = []
    for i, msgs in enumerate(conversations):
        try:
            ex = render_chat(msgs, tokenizer, max_length)
        except ValueError as e:
            log.warning("conversation %d not scored: %s", i, e)
            continue
        if ex is not None:
            items.append(Item(str(i), (ex,)))
    if not items:
        return None, 0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, tokens = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(items), batch_size):
            rows = [[it.examples[0]] for it in items[k:k + batch_size]]
            s, n = sft_loss_sum(model, collate(rows, pad))
            total, tokens = total + float(s), tokens + int(n)
    return (total / tokens if tokens else None), len(items), tokens


__all__ = ["load_for_loss", "mean_loss"]
