"""Config: files, overrides and loud errors on unknown keys."""

from __future__ import annotations

import pytest

from gt_ext.errors import ConfigError, GtExtError
from gt_ext.train.config import apply_overrides, config_to_dict, load_config


def test_defaults_validate():
    cfg = load_config()
    assert cfg.mode == "sft" and cfg.lora.r == 8 and cfg.data.pack


def test_yaml_and_toml_files(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("max_steps: 7\nlora:\n  r: 4\n  targets: [q_proj]\noptim:\n  lr: 1.0e-3\n")
    t = tmp_path / "c.toml"
    t.write_text("max_steps = 7\n[lora]\nr = 4\ntargets = ['q_proj']\n[optim]\nlr = 1e-3\n")
    a, b = load_config(y), load_config(t)
    assert config_to_dict(a) == config_to_dict(b)
    assert a.max_steps == 7 and a.lora.targets == ["q_proj"] and a.optim.lr == 1e-3


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=1e-4", "lora.targets=[q_proj,v_proj]", "data.pack=false", "max_time_s=30"])
    assert cfg.optim.lr == 1e-4 and cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.data.pack is False and cfg.max_time_s == 30


def test_override_does_not_mutate_input():
    data = {"optim": {"lr": 1.0}}
    apply_overrides(data, ["optim.lr=2"])
    assert data == {"optim": {"lr": 1.0}}


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["optim.lrr=1"], "'lrr'"),
        (["nope=1"], "'nope'"),
        (["max_steps.x=1"], "not a section"),
        (["max_steps"], "key=value"),
        (["max_steps=0"], "max_steps"),
        (["mode=ppo"], "mode"),
    ],
)
def test_bad_overrides_raise_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("lora:\n  rank: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*lora.rank"):
        load_config(p)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(GtExtError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "bad.toml"
    p.write_text("max_steps = = 3")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(p)


def test_train_help_lists_every_config_key_with_its_default(capsys, monkeypatch):
    """Issue #20: the training config keys were documented nowhere a user looks."""
    from gt_ext.cli import main
    from gt_ext.train.config import config_keys

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    keys = config_keys()
    assert len(keys) > 30
    for key, _default, _desc in keys:
        assert f" {key}=" in out, key
    for shown in ("max_steps=200", "lora.r=8", "optim.lr=0.0002", "data.pack=true", "lora.targets=[q_proj,k_proj,v_proj,o_proj]"):
        assert shown in out, shown
