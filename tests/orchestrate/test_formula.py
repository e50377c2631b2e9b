"""Formula files: gt's schema, our `run` keys, deterministic ordering, variable checks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.orchestrate.formula import PROJECT_FORMULAS, load_formula, substitute


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "x.formula.toml"
    p.write_text(text)
    return p


def test_project_formulas_follow_gt_schema():
    names = set()
    for p in sorted(PROJECT_FORMULAS.glob("*.formula.toml")):
        raw = tomllib.loads(p.read_text())
        assert raw["formula"] == p.name.removesuffix(".formula.toml")  # gt keys on `formula`, not `name`
        assert "name" not in raw
        f = load_formula(p)
        names.add(f.name)
        assert f.steps, p
        for s in f.steps:
            assert s.run and s.description and s.title, (p, s.id)
    assert {"train-role-model", "corpus-collect", "eval-suite", "improve-role"} <= names


def test_train_role_model_order_and_vars():
    f = load_formula(PROJECT_FORMULAS / "train-role-model.formula.toml")
    assert [s.id for s in f.ordered_steps()] == ["export-corpus", "validate", "train", "export", "eval", "register"]
    values = f.resolve_vars({"role": "witness"}, {"job_dir": "/j"})
    assert values["corpus_path"] == "/j/corpus"
    assert values["suite"] == "role:witness"
    assert values["lora_rank"] == "64"
    with pytest.raises(GtExtError, match="missing required variable 'role'"):
        f.resolve_vars({}, {"job_dir": "/j"})
    with pytest.raises(GtExtError, match="unknown variable 'rol'"):
        f.resolve_vars({"rol": "x"}, {"job_dir": "/j"})


def test_ordering_is_dependency_order_with_file_order_ties(tmp_path):
    f = load_formula(write(tmp_path, '''
formula = "x"
[[steps]]
id = "c"
title = "c"
needs = ["b"]
[[steps]]
id = "a"
title = "a"
[[steps]]
id = "b"
title = "b"
needs = ["a"]
[[steps]]
id = "d"
title = "d"
'''))
    assert [s.id for s in f.ordered_steps()] == ["a", "b", "c", "d"]


def test_cycle_unknown_need_and_bad_toml_are_one_line_errors(tmp_path):
    f = load_formula(write(tmp_path, 'formula = "x"\n[[steps]]\nid="a"\nneeds=["b"]\n[[steps]]\nid="b"\nneeds=["a"]\n'))
    with pytest.raises(GtExtError, match="cycle"):
        f.ordered_steps()
    with pytest.raises(GtExtError, match="needs unknown step 'zz'"):
        load_formula(write(tmp_path, 'formula = "x"\n[[steps]]\nid="a"\nneeds=["zz"]\n'))
    with pytest.raises(GtExtError, match=r"x\.formula\.toml: invalid TOML"):
        load_formula(write(tmp_path, 'formula = "x\n'))
    with pytest.raises(GtExtError, match="missing required key 'formula'"):
        load_formula(write(tmp_path, 'name = "x"\n'))


def test_var_shorthand_and_substitution(tmp_path):
    f = load_formula(write(tmp_path, 'formula = "x"\n[vars]\ncolor = "red"\n[vars.size]\nrequired = true\n'))
    assert f.vars["color"].default == "red" and f.vars["size"].required
    assert substitute("{{ color }}-{{size}}", {"color": "red", "size": "2"}) == "red-2"
    with pytest.raises(GtExtError, match="no value"):
        substitute("{{nope}}", {})
