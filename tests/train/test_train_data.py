"""Data: assistant-only targets, truncation counts, packing plans, seeded resumable loading."""

from __future__ import annotations

import json

import pytest
from train_corpus import write_corpus

from gt_ext.errors import GtExtError
from gt_ext.models import load_tokenizer
from gt_ext.train import data


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


MSGS = [
    {"role": "system", "content": "You are the witness."},
    {"role": "user", "content": "Is nux stuck?"},
    {"role": "assistant", "content": "Checking nux."},
    {"role": "tool", "content": "nux: idle 40m"},
    {"role": "assistant", "content": "Nudged nux."},
]


def test_targets_are_exactly_the_assistant_answers(tok):
    ex = data.render_chat(MSGS, tok, 512)
    assert len(ex.input_ids) == len(ex.targets)
    # The full text is the model's own chat template.
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(MSGS, tokenize=False)
    learned = tok.decode([t for t in ex.targets if t != data.IGNORE])
    assert learned == "Checking nux.<|im_end|>Nudged nux.<|im_end|>"
    # targets are shifted: every target equals the next input token.
    for t, tgt in enumerate(ex.targets[:-1]):
        assert tgt in (data.IGNORE, ex.input_ids[t + 1])
    assert ex.targets[-1] == data.IGNORE


def test_only_last_answer_for_dpo(tok):
    ex = data.render_chat(MSGS, tok, 512, only_last=True)
    assert tok.decode([t for t in ex.targets if t != data.IGNORE]) == "Nudged nux.<|im_end|>"


def test_truncation_is_counted_not_silent(tmp_path, tok):
    corpus = write_corpus(tmp_path / "c", tasks=("patrol",), n_train=6, n_val=2)
    full, st_full = data.load_items(corpus, "sft", "witness", "patrol", "train", tok, 4096)
    assert st_full.truncated == 0
    shortest = min(len(i) for i in full)
    items, st = data.load_items(corpus, "sft", "witness", "patrol", "train", tok, shortest - 1)
    assert st.truncated == st.records == 6
    assert st.items + st.dropped_no_target == st.records
    assert all(len(i) <= shortest - 1 for i in items)
    # So short that no assistant token survives: counted as dropped.
    _, st2 = data.load_items(corpus, "sft", "witness", "patrol", "train", tok, 20)
    assert st2.dropped_no_target == 6 and st2.items == 0


def test_bad_json_line_names_file_and_line(tmp_path, tok):
    p = tmp_path / "c" / "sft" / "witness" / "patrol" / "train.jsonl"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"id": "a", "messages": MSGS}) + "\n{not json\n")
    with pytest.raises(GtExtError, match=r"train.jsonl:2: invalid JSON"):
        data.load_items(tmp_path / "c", "sft", "witness", "patrol", "train", tok, 512)
    p.write_text(json.dumps({"id": "a", "messages": "hi"}) + "\n")
    with pytest.raises(GtExtError, match=r"train.jsonl:1: 'messages'"):
        data.load_items(tmp_path / "c", "sft", "witness", "patrol", "train", tok, 512)


def _items(lengths):
    return [data.Item(str(i), (data.Example([1] * n, [data.IGNORE] * n),)) for i, n in enumerate(lengths)]


def test_first_fit_packing_respects_length():
    items = _items([60, 50, 40, 30, 20, 120])
    rows = data.plan_rows(items, range(6), True, 100)
    assert sorted(i for r in rows for i in r) == list(range(6))
    for r in rows:
        assert sum(len(items[i]) for i in r) <= 100 or len(r) == 1
    assert rows[0] == [0, 2]  # 60 + 40 fills the first row
    assert data.plan_rows(items, range(6), False, 100) == [[i] for i in range(6)]


def test_collate_block_diagonal_mask_and_positions():
    a = data.Example([5, 6, 7], [6, 7, data.IGNORE])
    b = data.Example([8, 9], [9, data.IGNORE])
    batch = data.collate([[a, b], [b]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1]
    assert batch["example_index"].tolist() == [[0, 0, 0, 1, 1], [2, 2, -1, -1, -1]]
    mask = data.dense_mask(batch["example_index"])  # [B, 1, T, T]
    m = mask[0, 0]
    assert m[3].tolist() == [False, False, False, True, False]  # b's first token sees only itself
    assert m[2].tolist() == [True, True, True, False, False]
    assert not mask[1, 0, :2, 2:].any()  # nobody attends to padding
    assert data.batch_tokens(batch) == 7


def test_loader_is_seeded_and_resumes_mid_epoch():
    items = _items([10, 20, 30, 40, 50, 60, 70, 15, 25])

    def run(loader, n):
        return [b["item_ids"] for b in (loader.next_batch() for _ in range(n))]

    a = run(data.BatchLoader(items, 2, True, 64, seed=3, pad_id=0), 9)
    assert a == run(data.BatchLoader(items, 2, True, 64, seed=3, pad_id=0), 9)
    assert a != run(data.BatchLoader(items, 2, True, 64, seed=4, pad_id=0), 9)
    first = data.BatchLoader(items, 2, True, 64, seed=3, pad_id=0)
    run(first, 4)  # crosses an epoch boundary
    state = json.loads(json.dumps(first.state_dict()))
    second = data.BatchLoader(items, 2, True, 64, seed=3, pad_id=0)
    second.load_state_dict(state)
    assert run(second, 5) == a[4:]
    with pytest.raises(GtExtError, match="does not match"):
        data.BatchLoader(items, 2, True, 64, seed=9, pad_id=0).load_state_dict(state)


def test_every_item_once_per_epoch():
    items = _items([10, 20, 30, 40, 50])
    loader = data.BatchLoader(items, 2, True, 64, seed=0, pad_id=0)
    seen = []
    for _ in range(loader.batches_per_epoch()):
        seen += loader.next_batch()["item_ids"]
    assert sorted(seen) == [str(i) for i in range(5)]


def test_dpo_items_keep_pairs_together(tmp_path, tok):
    corpus = write_corpus(tmp_path / "c", tasks=("patrol",), n_train=4, n_val=2)
    items, st = data.load_items(corpus, "dpo", "witness", "patrol", "train", tok, 512)
    assert st.items == 4 and all(len(i.examples) == 2 for i in items)
    for pack in (True, False):
        b = data.fixed_batches(items, 4, pack, 1024, tok.pad_token_id)[0]
        assert b["n_examples"] == 8
        chosen = b["example_index"] == 0
        ids = b["input_ids"][chosen]
        assert "I nudge" in tok.decode(ids) and "I delete" not in tok.decode(ids)
        assert b["input_ids"].shape[0] == (1 if pack else 8)
