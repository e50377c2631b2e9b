"""Retrieval pieces without an index: filters, recency, MMR, token budget."""

from __future__ import annotations

import numpy as np
import pytest

from gt_ext.rag.retrieve import Hit, assemble, build_where, count_tokens, mmr, recency_boost


def test_where_combines_filters():
    assert build_where(None, None, None) is None
    assert build_where("witness", None, None) == {"role": {"$in": ["witness", "*"]}}
    w = build_where("witness", "demo", ("open",))
    assert {"rig": {"$in": ["demo", "*"]}} in w["$and"] and {"status": {"$in": ["", "open"]}} in w["$and"]


def test_recency_halves_per_half_life():
    now = 1_000_000_000.0
    assert recency_boost(now, now) == pytest.approx(0.1)
    assert recency_boost(now - 7 * 86400, now) == pytest.approx(0.05)
    assert recency_boost(0.0, now) == 0.0


def test_mmr_prefers_diverse_items():
    # items 0 and 1 are identical and most relevant; 2 is different and a bit less relevant.
    v = np.array([[1, 0], [1, 0], [0, 1]], dtype=float)
    assert mmr([0.9, 0.89, 0.8], v, 2, lam=0.5) == [0, 2]
    assert mmr([0.9, 0.89, 0.8], v, 2, lam=1.0) == [0, 1]
    assert mmr([], np.zeros((0, 2)), 3) == []


@pytest.fixture(scope="module")
def tok():
    from gt_ext.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def _hit(i, text):
    return Hit(f"id{i}", text, {"source": f"bead:demo:dm-{i}"}, 0.5, 0.5)


def test_assemble_respects_budget(tok):
    hits = [_hit(i, f"bead dm-{i} " + "polecat work " * (10 + 5 * i)) for i in range(10)]
    for budget in (40, 100, 300, 2500):
        block = assemble(hits, budget, tok)
        assert count_tokens(block, tok) <= budget
    full = assemble(hits, 100_000, tok)
    assert all(f"[bead:demo:dm-{i}]" in full for i in range(10))
    assert assemble(hits, 0, tok) == "" and assemble([], 100, tok) == ""


def test_assemble_truncates_a_single_oversized_hit(tok):
    block = assemble([_hit(0, "word " * 2000)], 64, tok)
    assert block and count_tokens(block, tok) <= 64


def test_role_budget_is_under_a_fifth_of_gt_prime_at_most_2500():
    from gt_ext.errors import GtExtError
    from gt_ext.rag.retrieve import GT_PRIME_TOKENS, MAX_BUDGET, role_budget
    from gt_ext.roles import ROLES

    assert set(GT_PRIME_TOKENS) == set(ROLES)
    for role in ROLES:
        b = role_budget(role)
        assert 0 < b <= MAX_BUDGET and b <= 0.18 * GT_PRIME_TOKENS[role] and b % 50 == 0
        assert b > 0.18 * GT_PRIME_TOKENS[role] - 50  # rounded down, not more
    assert role_budget("boot") == 450 and role_budget("refinery") == 2450
    with pytest.raises(GtExtError, match="wizard"):
        role_budget("wizard")


def test_embed_threads_setting_and_restore(monkeypatch):
    import torch

    from gt_ext.errors import GtExtError
    from gt_ext.rag.embed import THREADS_ENV, embed, embed_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert embed_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert embed_threads() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(GtExtError, match=THREADS_ENV):
            embed_threads()
    monkeypatch.delenv(THREADS_ENV)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        [v] = embed(["witness patrol"])
        assert torch.get_num_threads() == 2  # the caller's setting is back
        assert len(v) == 384 and abs(sum(x * x for x in v) - 1.0) < 1e-4
    finally:
        torch.set_num_threads(before)
