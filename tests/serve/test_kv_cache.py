"""SlotKVCache: slots stay 0..n-1 (a release moves the last sequence into the hole), storage grows."""

from __future__ import annotations

import pytest
import torch

from gt_ext.errors import GtExtError
from gt_ext.serve.kv_cache import SlotKVCache


def _fill(cache: SlotKVCache, slot: int, t: int, value: float) -> None:
    for layer in range(cache.n_layers):
        kv = torch.full((1, cache.n_kv_heads, t, cache.head_dim), value)
        cache.write(layer, slot, kv, -kv)
    cache.advance(slot, t)


def test_release_moves_last_sequence_into_the_hole():
    cache = SlotKVCache(n_layers=2, n_kv_heads=1, head_dim=4, max_slots=3, max_len=64, initial_len=8)
    slots = [cache.claim() for _ in range(3)]
    assert slots == [0, 1, 2]
    for s, (t, value) in enumerate([(2, 1.0), (3, 2.0), (5, 3.0)]):
        _fill(cache, s, t, value)
    with pytest.raises(GtExtError, match="all 3 slots"):
        cache.claim()
    assert cache.release(0) == 2  # the sequence of slot 2 now lives in slot 0
    assert cache.lengths == [5, 3]
    k, v = cache.slot_view(1, 0, 5)
    assert torch.equal(k, torch.full((1, 1, 5, 4), 3.0)) and torch.equal(v, -k)
    assert cache.release(1) is None  # the last slot: nothing moves
    assert cache.used == 1 and cache.claim() == 1


def test_reserve_grows_and_keeps_contents():
    cache = SlotKVCache(n_layers=1, n_kv_heads=2, head_dim=2, max_slots=2, max_len=40, initial_len=4)
    s = cache.claim()
    _fill(cache, s, 3, 7.0)
    cache.reserve(9)
    assert cache.capacity == 16  # doubled until it fits
    k, _ = cache.view(0, 1, 3)
    assert torch.equal(k, torch.full((1, 2, 3, 2), 7.0))
    cache.reserve(33)
    assert cache.capacity == 40  # never beyond max_len
    with pytest.raises(GtExtError, match="exceed the limit of 40"):
        cache.reserve(41)
    with pytest.raises(GtExtError, match="not in use"):
        cache.release(1)


def test_write_rows_puts_each_row_at_its_own_position():
    cache = SlotKVCache(n_layers=1, n_kv_heads=1, head_dim=2, max_slots=2, max_len=8, initial_len=8)
    a, b = cache.claim(), cache.claim()
    _fill(cache, a, 1, 1.0)
    _fill(cache, b, 3, 1.0)
    k = torch.tensor([[[5.0, 5.0]], [[9.0, 9.0]]])  # [n, kv_heads, head_dim]
    cache.write_rows(0, torch.tensor([a, b]), torch.tensor([1, 3]), k, -k)
    keys, _ = cache.view(0, 2, 4)
    assert keys[0, 0, 1].tolist() == [5.0, 5.0] and keys[1, 0, 3].tolist() == [9.0, 9.0]
    assert keys[0, 0, 2].tolist() == [0.0, 0.0]  # row a's later positions untouched


def test_release_outside_inference_mode_of_a_cache_grown_inside_it():
    """A cancelled request releases its slot outside inference mode, while the storage was made (or
    grown) by a decode step inside it: the slot is given back and the last sequence moved."""
    with torch.inference_mode():
        c = SlotKVCache(n_layers=2, n_kv_heads=1, head_dim=4, max_slots=4, max_len=64)
        a, b = c.claim(), c.claim()
        c.reserve(8)
        c.k[0][b, :, :3] = 7.0
        c.lengths[b] = 3
    assert c.release(a) == b
    assert c.used == 1 and c.lengths == [3] and float(c.k[0][a, 0, 2, 0]) == 7.0
