"""Training wordings of the patrol rules: every action has them, they stay apart from the held-out
wording, and "varied" training lists use them (and neutral labels) while the suite's lists do not."""

import random
import re
from collections import Counter

import pytest

from gt_ext.corpus.patrol import build, wordings
from gt_ext.corpus.patrol.steps import STEPS

KEYS = {f"{s.key}/{a.id}" for s in STEPS for a in s.actions}


def _grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9_]+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_every_action_has_three_more_rules_and_names():
    for table in (wordings.RULES, wordings.NAMES):
        assert set(table) == KEYS
        for key, v in table.items():
            assert isinstance(v, tuple) and len(v) == 3 and len(set(v)) == 3 and all(x.strip() for x in v), key


def test_training_wordings_share_no_four_words_with_the_held_out_wording():
    """The reworded family's rules stay unseen: no extra training wording of any action of the step
    shares a run of four words with any of the step's held-out rules."""
    for s in STEPS:
        held = set().union(*(_grams(a.reworded) for a in s.actions))
        for a in s.actions:
            for text in wordings.RULES[f"{s.key}/{a.id}"]:
                assert not _grams(text) & held, (s.key, a.id, text, _grams(text) & held)


def test_training_names_never_collide_with_held_out_names_or_each_other():
    neutral = {n for labels in build.NEUTRAL_LABELS for n in labels}
    assert not neutral & {a.heldout for s in STEPS for a in s.actions}
    for s in STEPS:
        names = [n for a in s.actions for n in (*a.names, *wordings.NAMES[f"{s.key}/{a.id}"])]
        assert len(names) == len(set(names)), f"{s.key}: a name lists two actions"
        assert not set(names) & {a.heldout for a in s.actions}, s.key


@pytest.mark.parametrize("st", STEPS, ids=lambda s: s.key)
def test_varied_lists_use_every_wording_and_sometimes_neutral_labels(st):
    r = random.Random(0)
    rules: dict[str, Counter] = {a.id: Counter() for a in st.actions}
    neutral = 0
    for _ in range(400):
        acts = build.allowed(st, "varied", r)
        assert sorted(a for a, _, _ in acts) == sorted(a.id for a in st.actions)
        assert len({n for _, n, _ in acts}) == len(acts)
        neutral += all(any(n in labels for labels in build.NEUTRAL_LABELS) for _, n, _ in acts)
        for aid, _, rule in acts:
            rules[aid][rule] += 1
    for a in st.actions:
        assert set(rules[a.id]) == {a.rule, *wordings.RULES[f"{st.key}/{a.id}"]}, a.id
    assert 40 < neutral < 130  # about a fifth of 400


def test_the_suites_train_wording_is_untouched_by_the_new_wordings():
    """Family `c` of the held-out suites lists training names with the usual rule (never an extra
    wording): what the committed suites were generated with."""
    for st in STEPS:
        r = random.Random(1)
        for _ in range(50):
            for aid, name, rule in build.allowed(st, "train", r):
                a = st.action(aid)
                assert rule == a.rule and name in a.names
