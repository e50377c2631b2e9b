"""A key/value cache for sequences that join and leave a running batch: one slot per sequence.

    cache = SlotKVCache(n_layers=30, n_kv_heads=3, head_dim=64, max_slots=8, max_len=2048)
    slot = cache.claim()                      # a new sequence
    cache.write(layer, [slot], pos, k, v)    # k, v: [n, kv_heads, t, head_dim] at positions pos..
    keys, values = cache.view(layer, n_rows, length)   # [n_rows, kv_heads, length, head_dim]
    cache.release(slot)                       # the last slot's sequence moves into the hole

Slots in use are always 0..n-1 (a release moves the last sequence into the freed slot), so a
decode step over every running sequence reads `view(layer, n, longest)`: plain views, no gather.
Storage grows (doubling, up to `max_len`) along the length axis when a sequence needs it.

It knows nothing about models: any stack of attention layers (all of a model, or the layers a
pipeline stage holds) keeps its sequences here, with `layer` counted from 0 within the stack.
"""

from __future__ import annotations

import torch

from gt_ext.errors import GtExtError


class SlotKVCache:
    """Per-layer K and V tensors [max_slots, kv_heads, capacity, head_dim] plus each slot's length."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", initial_len: int = 256):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_slots, self.max_len = max_slots, max_len
        self.dtype, self.device = dtype, device
        self.capacity = min(initial_len, max_len)
        shape = (max_slots, n_kv_heads, self.capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths: list[int] = []  # lengths[slot] for slots 0..n-1 in use

    @property
    def used(self) -> int:
        """How many slots hold a sequence (they are slots 0..used-1)."""
        return len(self.lengths)

    def claim(self) -> int:
        """A slot for a new, empty sequence; raises when all are taken."""
        if self.used >= self.max_slots:
            raise GtExtError(f"KV cache: all {self.max_slots} slots are in use")
        self.lengths.append(0)
        return self.used - 1

    def release(self, slot: int) -> int | None:
        """Free `slot`. The sequence in the last slot (if another) moves into it: returns its old slot."""
        last = self.used - 1
        if not 0 <= slot <= last:
            raise GtExtError(f"KV cache: slot {slot} is not in use")
        moved = None
        if slot != last:
            n = self.lengths[last]
            # The storage may be made inside torch.inference_mode (a decode step grew it); such tensors
            # only take in-place writes inside it, and a release can come from outside (a cancelled
            # request): without this the copy raised and the slot was never given back.
            with torch.inference_mode():
                for t in (*self.k, *self.v):
                    t[slot, :, :n] = t[last, :, :n]
            self.lengths[slot] = n
            moved = last
        self.lengths.pop()
        return moved

    def reserve(self, length: int) -> None:
        """Make room for sequences of `length` positions (grows every layer's storage)."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise GtExtError(f"KV cache: {length} positions exceed the limit of {self.max_len}")
        cap = self.capacity
        while cap < length:
            cap = min(cap * 2, self.max_len)
        for store in (self.k, self.v):
            for i, t in enumerate(store):
                bigger = torch.zeros((self.max_slots, self.n_kv_heads, cap, self.head_dim), dtype=self.dtype,
                                     device=self.device)
                bigger[:, :, : self.capacity] = t
                store[i] = bigger
        self.capacity = cap

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [1, kv_heads, t, head_dim] for the sequence in slot `start` at its positions
        lengths[slot].. (a prefill or chunk of one sequence); call `advance` after the last layer."""
        pos = self.lengths[start]
        t = k.shape[2]
        self.k[layer][start, :, pos : pos + t] = k[0]
        self.v[layer][start, :, pos : pos + t] = v[0]

    def write_rows(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor) -> None:
        """Store one new position per running sequence: k, v [n, kv_heads, head_dim] of slots `rows`
        at `positions` (both [n] long tensors) in one indexed write."""
        self.k[layer][rows, :, positions] = k
        self.v[layer][rows, :, positions] = v

    def advance(self, slot: int, t: int) -> None:
        """`slot`'s sequence is now `t` positions longer (after every layer was written)."""
        self.lengths[slot] += t

    def slot_view(self, layer: int, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one slot, positions 0..length-1: [1, kv_heads, length, head_dim]."""
        return self.k[layer][slot : slot + 1, :, :length], self.v[layer][slot : slot + 1, :, :length]

    def view(self, layer: int, n_rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots 0..n_rows-1, positions 0..length-1: [n_rows, kv_heads, length, head_dim]."""
        return self.k[layer][:n_rows, :, :length], self.v[layer][:n_rows, :, :length]
