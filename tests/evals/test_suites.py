"""The project's own suites: sizes, categories, and separation from the training corpus."""

from __future__ import annotations

from collections import Counter

import pytest

from gt_ext.evals import contamination
from gt_ext.evals import suite as suite_mod

OWN = ("boot", "crew", "deacon", "mayor", "polecat", "witness")
# Suites with a held-out split by scenario (deacon and witness are being rebuilt with theirs).
SPLIT = ("boot", "crew", "mayor", "polecat")
CATEGORIES = {
    "boot": {"patrol": 20, "convention-adherence": 6, "bead-management": 6},
    "mayor": {"planning": 8, "dispatch": 8, "bead-management": 8, "convention-adherence": 8},
    "crew": {"dispatch": 8, "git-workflow": 8, "bead-management": 5, "convention-adherence": 5, "planning": 4},
}


@pytest.mark.parametrize("role,minimum", [("deacon", 40), ("witness", 40), ("polecat", 60), ("boot", 36),
                                          ("mayor", 36), ("crew", 36)])
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


@pytest.mark.parametrize("role", sorted(CATEGORIES))
def test_new_role_suites_cover_their_categories(role):
    cats = Counter(t.category for t in suite_mod.load(f"builtin:{role}").tasks)
    for cat, n in CATEGORIES[role].items():
        assert cats[cat] >= n, (role, cats)


@pytest.mark.parametrize("role", SPLIT)
def test_heldout_split_is_by_scenario(role):
    """Whole scenario families are held out (never single cases), in more than one category, and
    every family has more than one case (so a split by case would have been possible, and is not
    what happened)."""
    st = suite_mod.load(f"builtin:{role}")
    by_scenario: dict[str, set[str]] = {}
    for t in st.tasks:
        assert t.scenario, t.id
        by_scenario.setdefault(t.scenario, set()).add(st.split_of(t))
    assert all(len(splits) == 1 for splits in by_scenario.values()), by_scenario
    held = [t for t in st.tasks if st.split_of(t) == "heldout"]
    assert len({t.category for t in held}) >= 3 and 0.15 <= len(held) / len(st.tasks) <= 0.35
    assert {t.scenario for t in held} == set(st.heldout)
    assert all(sum(t.scenario == sc for t in st.tasks) >= 2 for sc in by_scenario), role
    assert st.select("dev") + st.select("heldout") != [] and len(st.select("dev")) + len(held) == len(st.tasks)


def test_split_rules_are_checked(tmp_path):
    from gt_ext.errors import GtExtError

    d = tmp_path / "s"
    d.mkdir()
    (d / "promptfooconfig.yaml").write_text(
        "prompts: ['{{ q }}']\ntests:\n"
        "  - {description: a, metadata: {scenario: one}, vars: {q: x}, assert: [{type: contains, value: x}]}\n"
        "  - {description: b, metadata: {scenario: two}, vars: {q: y}, assert: [{type: contains, value: y}]}\n")
    (d / "suite.yaml").write_text("heldout: [three]\n")
    with pytest.raises(GtExtError, match="heldout names scenario 'three', which no task has"):
        suite_mod.load(d)
    (d / "suite.yaml").write_text("heldout: [one, two]\n")
    with pytest.raises(GtExtError, match="every scenario is held out"):
        suite_mod.load(d)
    (d / "suite.yaml").write_text("heldout: [two]\n")
    st = suite_mod.load(d)
    assert [t.id for t in st.select("heldout")] == ["b"] and [t.id for t in st.select("dev")] == ["a"]
    with pytest.raises(GtExtError, match="--split must be dev, heldout or all"):
        st.select("test")
    (d / "promptfooconfig.yaml").write_text(
        "prompts: ['{{ q }}']\ntests:\n"
        "  - {description: a, metadata: {scenario: one}, vars: {q: x}, assert: [{type: contains, value: x}]}\n"
        "  - {description: b, vars: {q: y}, assert: [{type: contains, value: y}]}\n")
    (d / "suite.yaml").write_text("heldout: [one]\n")
    with pytest.raises(GtExtError, match="every task needs a scenario; 1 have none \\(first: b\\)"):
        suite_mod.load(d)


HIDDEN = {"expect", "target", "min_beads", "min_ratio", "order", "cmd", "forbid", "rig_of", "epic",
          "expect_id", "preserve", "noop", "allowed_names", "step", "family"}
# Formula patrol suites (gt_ext.corpus.patrol): held-out scenario families only.
PATROL = ("witness-patrol", "refinery-patrol", "deacon-patrol", "dog-patrol")


def test_hidden_expectations_never_reach_the_prompt():
    from gt_ext.evals import promptfoo

    for role in (*OWN, *PATROL):
        for t in suite_mod.load(f"builtin:{role}").tasks:
            if not hasattr(t, "test"):
                continue  # sandbox tasks keep their checks outside the prompt by construction
            used = promptfoo.template_vars(t.prompt.raw)
            assert not used & HIDDEN, t.id


def test_unknown_builtin_suite_lists_the_known_ones():
    from gt_ext.errors import GtExtError

    with pytest.raises(GtExtError, match="builtin suites are boot, crew, deacon, .*witness"):
        suite_mod.load("builtin:overseer")


def test_suites_do_not_overlap_the_sample_town():
    """The contamination guard finds no shared 8-gram between our tasks and the sample town corpus."""
    from gt_ext.corpus import sample_town

    texts = [m["content"] for s in sample_town.generate(seed=0) for m in s.messages]
    for role in OWN:
        rep = contamination.check_tasks(suite_mod.load(f"builtin:{role}").tasks, texts)
        assert rep.refused == [], (role, {t: rep.examples[t] for t in rep.refused})


def test_the_suite_that_gates_each_role(tmp_path, monkeypatch):
    """role:ROLE names the suite that gates ROLE: the formula patrol suite where there is one, the
    role's own builtin suite otherwise, or the town's choice in its gt-ext settings."""
    import json

    from gt_ext.roles import ROLES

    specs = {r: suite_mod.role_suite(r) for r in ROLES}
    assert specs == {"mayor": "builtin:mayor", "deacon": "builtin:deacon-patrol", "boot": "builtin:boot",
                     "dog": "builtin:dog-patrol", "witness": "builtin:witness-patrol",
                     "refinery": "builtin:refinery-patrol", "polecat": "builtin:polecat", "crew": "builtin:crew"}
    for spec in specs.values():
        assert suite_mod.resolve_suite_dir(spec).is_dir(), spec  # every role has one
    town = tmp_path / "town"
    (town / "mayor").mkdir(parents=True)
    (town / "mayor" / "town.json").write_text("{}")
    (town / "settings").mkdir()
    (town / "settings" / "gt-ext.json").write_text(json.dumps({"evals": {"gate_suites": {"boot": "suites/boot"}}}))
    assert suite_mod.role_suite("boot", town) == str((town / "suites" / "boot").resolve())
    assert suite_mod.role_suite("crew", town) == "builtin:crew"
    monkeypatch.setenv("GT_TOWN_ROOT", str(town))
    (town / "suites" / "boot").mkdir(parents=True)
    assert suite_mod.resolve_suite_dir("role:boot") == (town / "suites" / "boot").resolve()
