"""Training data: corpus export shards -> chat-template tokens -> packed, shuffled, resumable batches.

Public API (stable; the swarm loop builds on it):

    (reading the shards: `gt_ext.corpus.shards.partition_files` / `iter_records`)
    render_chat(messages, tokenizer, max_length, only_last=False) -> Example | None
    load_items(corpus, kind, role, task, split, tokenizer, max_length, limit=None) -> (items, RenderStats)
    BatchLoader(items, batch_size, pack, pack_length, seed, pad_id)  # endless, .state_dict()/.load_state_dict()
    fixed_batches(items, batch_size, pack, pack_length, pad_id) -> list[Batch]   # validation, no shuffle
    collate(rows, pad_id) -> Batch
    dense_mask(example_index) -> [B, 1, T, T] bool   # block-diagonal causal mask, for plain models

An `Example` holds `input_ids` and already-shifted `targets` (targets[t] is the token to predict
after position t, -100 where no loss), so packing several examples into one row never makes the
last token of one example predict the first token of the next. An *item* is a tuple of examples
that stay together: SFT items have one example, DPO items two (chosen, rejected).

A `Batch` is a dict of tensors:
    input_ids     [B, T] long    padded with pad_id
    targets       [B, T] long    -100 on prompt, padding and the last token of each example
    position_ids  [B, T] long    restart at 0 for every packed example
    example_index [B, T] long    index of the example in this batch's flat list, -1 on padding
plus python values `item_ids` (list[str]), `item_index` (list[int], positions in the item list)
and `n_examples` (int). Examples are numbered in row
order, so in a DPO batch example 2k is pair k's chosen answer and 2k+1 its rejected one.

No attention mask is stored: `example_index` says everything. The model side
(`gt_ext.train.losses.model_inputs`) either runs the real tokens as one flat row with segment
boundaries (no mask at all, see `gt_ext.train.attention`) or builds the block-diagonal
`dense_mask(example_index)` [B, 1, T, T] for a plain model.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gt_ext.corpus.shards import iter_records, partition_files
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Example:
    """One tokenized conversation: inputs and shifted targets of the same length."""

    input_ids: list[int]
    targets: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        """Number of positions that carry loss."""
        return sum(1 for t in self.targets if t != IGNORE)


@dataclass
class Item:
    """Examples that travel together (one for SFT; chosen and rejected for DPO) and the record id."""

    id: str
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return sum(len(e) for e in self.examples)


@dataclass
class RenderStats:
    """What happened to the records of one partition while rendering them."""

    records: int = 0
    items: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    target_tokens: int = 0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------------
# Rendering through the chat template
# ---------------------------------------------------------------------------------------------------


def _template(tokenizer: Any, messages: list[dict[str, str]], gen: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def assistant_spans(messages: list[dict[str, str]], tokenizer: Any, only_last: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return (text, [(start, end) character spans of assistant answers]).

    A span starts after the generation prompt (`<|im_start|>assistant\\n` for ChatML) and ends
    after the end-of-turn marker, so the model learns to stop. Found by rendering prefixes of the
    conversation, which works for any template whose renderings of prefixes are prefixes.
    """
    text = _template(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    idx = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if only_last:
        idx = idx[-1:]
    for i in idx:
        head = _template(tokenizer, messages[:i], gen=True) if i > 0 else None
        upto = _template(tokenizer, messages[: i + 1])
        if head is None or not upto.startswith(head) or not text.startswith(upto):
            raise ValueError("chat template is not prefix-stable for this conversation")
        end = len(upto.rstrip())  # the newline after the end-of-turn token is not an answer
        spans.append((len(head), end))
    return text, spans


def render_chat(messages: list[dict[str, str]], tokenizer: Any, max_length: int, only_last: bool = False) -> Example | None:
    """Tokenize a conversation with loss on assistant tokens only; None if no assistant token survives.

    Longer than `max_length` tokens: the tail is cut and `Example.truncated` is set.
    """
    text, spans = assistant_spans(messages, tokenizer, only_last=only_last)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    # A token is an answer token when it starts inside an assistant span.
    is_answer = [any(s <= off[0] < e for s, e in spans) for off in offsets]
    truncated = len(ids) > max_length
    ids, is_answer = ids[:max_length], is_answer[:max_length]
    # Shift: position t predicts token t+1.
    targets = [ids[t + 1] if is_answer[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    ex = Example(ids, targets, truncated)
    return ex if ex.n_targets > 0 else None


def _check_messages(msgs: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise GtExtError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise GtExtError(f"{where}: each message needs string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def record_to_item(rec: dict[str, Any], kind: str, tokenizer: Any, max_length: int) -> tuple[Item | None, bool]:
    """Render one corpus record; returns (item or None if nothing to learn, truncated?)."""
    where = rec.get("_where", "record")
    rid = str(rec.get("id") or where)
    try:
        if kind == "sft":
            ex = render_chat(_check_messages(rec.get("messages"), where), tokenizer, max_length)
            return (Item(rid, (ex,)) if ex else None), bool(ex and ex.truncated)
        prompt = _check_messages(rec.get("prompt"), where)
        pair = []
        for key in ("chosen", "rejected"):
            ans = rec.get(key)
            if not isinstance(ans, str):
                raise GtExtError(f"{where}: DPO record needs string {key!r}")
            pair.append(render_chat(prompt + [{"role": "assistant", "content": ans}], tokenizer, max_length, only_last=True))
        trunc = any(p is not None and p.truncated for p in pair)
        if pair[0] is None or pair[1] is None:
            return None, trunc
        return Item(rid, (pair[0], pair[1])), trunc
    except ValueError as e:
        raise GtExtError(f"{where}: {e}") from None


def load_items(
    corpus: str | Path,
    kind: str,
    role: str,
    task: str | None,
    split: str,
    tokenizer: Any,
    max_length: int,
    limit: int | None = None,
) -> tuple[list[Item], RenderStats]:
    """Read and render one partition. Truncations and drops are counted in the stats, never silent."""
    files = partition_files(corpus, kind, role, task, split)
    stats = RenderStats(files=[str(f) for f in files])
    items: list[Item] = []
    for rec in iter_records(files):
        stats.records += 1
        item, trunc = record_to_item(rec, kind, tokenizer, max_length)
        stats.truncated += int(trunc)
        if item is None:
            stats.dropped_no_target += 1
            continue
        items.append(item)
        stats.tokens += len(item)
        stats.target_tokens += sum(e.n_targets for e in item.examples)
        if limit is not None and len(items) >= limit:
            break
    stats.items = len(items)
    if stats.truncated:
        log.warning("%s/%s/%s %s: %d of %d examples truncated to %d tokens", kind, role, task or "*", split,
                    stats.truncated, stats.records, max_length)
    if stats.dropped_no_target:
        log.warning("%s/%s/%s %s: %d examples have no assistant tokens (after truncation) and carry no loss",
                    kind, role, task or "*", split, stats.dropped_no_target)
    return items, stats


# ---------------------------------------------------------------------------------------------------
# Packing, batching, resumable loading
# ---------------------------------------------------------------------------------------------------


def collate(
    rows: list[list[Example]], pad_id: int, item_ids: list[str] | None = None, item_index: list[int] | None = None
) -> dict[str, Any]:
    """Pad rows of (packed) examples into a Batch (see module docstring for the tensors)."""
    lengths = [sum(len(e) for e in row) for row in rows]
    B, T = len(rows), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    example_index = torch.full((B, T), -1, dtype=torch.long)
    k = 0
    for b, row in enumerate(rows):
        t = 0
        for ex in row:
            n = len(ex)
            input_ids[b, t : t + n] = torch.tensor(ex.input_ids)
            targets[b, t : t + n] = torch.tensor(ex.targets)
            position_ids[b, t : t + n] = torch.arange(n)
            example_index[b, t : t + n] = k
            k += 1
            t += n
        # Padding positions are irrelevant: no example ever attends to padding.
        position_ids[b, t:] = torch.arange(T - t)
    return {
        "input_ids": input_ids,
        "targets": targets,
        "position_ids": position_ids,
        "example_index": example_index,
        "n_examples": k,
        "item_ids": list(item_ids or []),
        "item_index": list(item_index or []),
    }


def dense_mask(example_index: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, T, T] from example_index [B, T]: query q sees key j iff
    j <= q and both belong to the same example. Padding is "example -1": it sees only padding, and
    nobody sees it."""
    T = example_index.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=example_index.device).tril()
    same = example_index[:, :, None] == example_index[:, None, :]
    return (same & causal)[:, None]


def plan_rows(items: Sequence[Item], order: Sequence[int], pack: bool, pack_length: int) -> list[list[int]]:
    """Group item indices (in `order`) into rows: first-fit into rows of `pack_length` tokens when
    packing, one item a row otherwise. An item longer than `pack_length` gets a row of its own."""
    if not pack:
        return [[i] for i in order]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(items[i])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(pack_length - n, 0))
    return rows


def _rows_to_batch(items: Sequence[Item], rows: list[list[int]], pad_id: int, split_pairs: bool) -> dict[str, Any]:
    ex_rows: list[list[Example]] = []
    ids: list[str] = []
    index: list[int] = []
    for row in rows:
        if split_pairs:  # unpacked: every example of every item gets its own row
            for i in row:
                ex_rows.extend([e] for e in items[i].examples)
        else:
            ex_rows.append([e for i in row for e in items[i].examples])
        ids.extend(items[i].id for i in row)
        index.extend(row)
    return collate(ex_rows, pad_id, ids, index)


class BatchLoader:
    """Endless, seeded, resumable micro-batch stream over rendered items.

    Epoch e visits the items in a permutation drawn from `seed + e`, packs them (first fit) into
    rows, and yields `batch_size` rows at a time. The position (epoch, batch index) is the whole
    state, so `load_state_dict(state_dict())` resumes mid-epoch at exactly the next batch.
    """

    def __init__(self, items: Sequence[Item], batch_size: int, pack: bool, pack_length: int, seed: int, pad_id: int):
        if not items:
            raise GtExtError("no training examples to load")
        self.items = list(items)
        self.batch_size, self.pack, self.pack_length = batch_size, pack, pack_length
        self.seed, self.pad_id = seed, pad_id
        self.epoch, self.index = 0, 0
        self._plan: list[list[list[int]]] | None = None

    def _epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        rows = plan_rows(self.items, order, self.pack, self.pack_length)
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def batches_per_epoch(self) -> int:
        """Micro-batches in the current epoch."""
        if self._plan is None:
            self._plan = self._epoch_plan(self.epoch)
        return len(self._plan)

    def next_batch(self) -> dict[str, Any]:
        """The next micro-batch; rolls over into the next epoch."""
        if self._plan is None:
            self._plan = self._epoch_plan(self.epoch)
        if self.index >= len(self._plan):
            self.epoch, self.index = self.epoch + 1, 0
            self._plan = self._epoch_plan(self.epoch)
        rows = self._plan[self.index]
        self.index += 1
        return _rows_to_batch(self.items, rows, self.pad_id, split_pairs=not self.pack)

    def advance(self, n: int) -> None:
        """Skip `n` micro-batches without building them (as `n` calls of `next_batch` would)."""
        for _ in range(n):
            if self._plan is None:
                self._plan = self._epoch_plan(self.epoch)
            if self.index >= len(self._plan):
                self.epoch, self.index = self.epoch + 1, 0
                self._plan = self._epoch_plan(self.epoch)
            self.index += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """Data position: the next batch to yield."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "items": len(self.items)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a position from `state_dict()` (same items and seed)."""
        if state.get("items", len(self.items)) != len(self.items) or state.get("seed", self.seed) != self.seed:
            raise GtExtError("checkpoint data position does not match this corpus/seed (items or seed changed)")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._plan = None


def fixed_batches(items: Sequence[Item], batch_size: int, pack: bool, pack_length: int, pad_id: int) -> list[dict[str, Any]]:
    """All items in corpus order as micro-batches (validation: same batches every time)."""
    rows = plan_rows(items, range(len(items)), pack, pack_length)
    return [_rows_to_batch(items, rows[i : i + batch_size], pad_id, split_pairs=not pack) for i in range(0, len(rows), batch_size)]


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (non-padding) tokens in a batch."""
    return int((batch["example_index"] >= 0).sum())
