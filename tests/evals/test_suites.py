"""The project's own suites: sizes, categories, and separation from the training corpus."""

from __future__ import annotations

from collections import Counter

import pytest

from gt_ext.evals import contamination
from gt_ext.evals import suite as suite_mod


@pytest.mark.parametrize("role,minimum", [("deacon", 40), ("witness", 40), ("polecat", 60)])
def test_suite_sizes(role, minimum):
    s = suite_mod.load(f"builtin:{role}")
    assert s.role == role
    assert len(s.tasks) >= minimum


def test_polecat_covers_every_category():
    cats = Counter(t.category for t in suite_mod.load("builtin:polecat").tasks)
    for cat in ("bead-management", "git-workflow", "convention-adherence", "planning", "code-execution"):
        assert cats[cat] >= 10, cats


def test_patrol_roles_have_patrol_and_conventions():
    for role in ("deacon", "witness"):
        cats = Counter(t.category for t in suite_mod.load(f"builtin:{role}").tasks)
        assert cats["patrol"] >= 20 and cats["convention-adherence"] >= 8, (role, cats)


def test_hidden_expectations_never_reach_the_prompt():
    from gt_ext.evals import promptfoo

    for role in ("deacon", "witness", "polecat", "witness-patrol", "refinery-patrol", "deacon-patrol", "dog-patrol"):
        for t in suite_mod.load(f"builtin:{role}").tasks:
            if not hasattr(t, "test"):
                continue  # sandbox tasks keep their checks outside the prompt by construction
            used = promptfoo.template_vars(t.prompt.raw)
            assert not used & {"expect", "expect_id", "target", "preserve", "min_beads", "min_ratio", "order"}, t.id


def test_unknown_builtin_suite_lists_the_known_ones():
    from gt_ext.errors import GtExtError

    with pytest.raises(GtExtError, match="builtin suites are deacon, .*polecat.*witness"):
        suite_mod.load("builtin:mayor")


def test_suites_do_not_overlap_the_sample_town():
    """The contamination guard finds no shared 8-gram between our tasks and the sample town corpus."""
    sample_town = pytest.importorskip("gt_ext.corpus.sample_town")
    texts = [m["content"] for s in sample_town.generate(seed=0) for m in s.messages]
    for role in ("deacon", "witness", "polecat"):
        rep = contamination.check_tasks(suite_mod.load(f"builtin:{role}").tasks, texts)
        assert rep.refused == [], (role, {t: rep.examples[t] for t in rep.refused})
