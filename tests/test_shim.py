"""The `gt` shim: routing to gt-ext, and exact pass-through to the real gt."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gt_ext.cli import main
from gt_ext.errors import GtExtError
from gt_ext.shim import formulas_dir, install_shim, render_shim, route

OUR_FORMULA = sorted(p.name.removesuffix(".formula.toml") for p in formulas_dir().glob("*.formula.toml"))

# A stand-in "real gt" for the pass-through mechanics only: it records argv and stdin and exits
# with the code it is told. The real gt is used in the integration tests below.
RECORDER = """#!/bin/sh
printf '%s\\0' "$@" > "$REC_OUT.argv"
cat > "$REC_OUT.stdin"
echo "to stdout"
echo "to stderr" >&2
exit "${REC_CODE:-0}"
"""


@pytest.fixture
def shim(tmp_path: Path) -> Path:
    return install_shim([tmp_path / "shimbin"])[0]


def _recorder(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER)
    path.chmod(0o755)
    return path


def _env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GT_REAL_BIN"}
    env.update(kw)
    return env


# -- routing --------------------------------------------------------------------------------------
def test_formulas_exist() -> None:
    assert OUR_FORMULA, f"no formulas in {formulas_dir()}"


@pytest.mark.parametrize(("argv", "want"), [
    (["corpus", "export", "--out", "x"], ["corpus", "export", "--out", "x"]),
    (["model", "list", "--json"], ["model", "list", "--json"]),
    (["model"], ["model"]),
    (["version"], None),
    (["formula", "list"], None),
    (["formula", "run"], None),
    (["formula", "run", "not-one-of-ours", "role=polecat"], None),
    (["mail", "send", "corpus"], None),
    ([], None),
])
def test_route(argv: list[str], want: list[str] | None) -> None:
    assert route(argv) == want


def test_route_our_formula_turns_k_v_into_set() -> None:
    name = OUR_FORMULA[0]
    assert route(["formula", "run", name, "role=polecat", "--set", "steps=3", "--set=rig=demo", "--dry-run"]) == [
        "formula", "run", name, "--set", "role=polecat", "--set", "steps=3", "--set", "rig=demo", "--dry-run"]
    assert route(["formula", "run", "--set", "a=1", name]) == ["formula", "run", name, "--set", "a=1"]


def test_shim_is_stdlib_only() -> None:
    text = render_shim()
    imports = {ln.split()[1] for ln in text.splitlines() if ln.startswith(("import ", "from "))}
    assert imports == {"os", "sys"}


# -- pass-through mechanics -------------------------------------------------------------------------
def test_passthrough_exact_argv_stdin_exit_code(shim: Path, tmp_path: Path) -> None:
    rec = _recorder(tmp_path / "real" / "gt")
    out = tmp_path / "rec"
    argv = ["formula", "run", "not-ours", "role=polecat", "", "with space", "ünï", "--set", "a=b"]
    res = subprocess.run([str(shim), *argv], input="hello stdin\n", capture_output=True, text=True,
                         env=_env(GT_REAL_BIN=str(rec), REC_OUT=str(out), REC_CODE="7"))
    assert res.returncode == 7
    assert res.stdout == "to stdout\n" and res.stderr == "to stderr\n"
    assert out.with_suffix(".argv").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]
    assert out.with_suffix(".stdin").read_text() == "hello stdin\n"


def test_finds_gt_real_beside_the_shim(shim: Path, tmp_path: Path) -> None:
    _recorder(shim.parent / "gt-real")
    out = tmp_path / "rec"
    res = subprocess.run([str(shim), "status"], capture_output=True, text=True, env=_env(REC_OUT=str(out)))
    assert res.returncode == 0, res.stderr
    assert out.with_suffix(".argv").read_bytes() == b"status\0"


def test_finds_real_gt_on_path_skipping_itself(shim: Path, tmp_path: Path) -> None:
    # PATH: the shim's folder, another copy of the shim, then the "real" gt.
    other = install_shim([tmp_path / "othershim"])[0]
    rec = _recorder(tmp_path / "real" / "gt")
    out = tmp_path / "rec"
    path = os.pathsep.join([str(shim.parent), str(other.parent), str(rec.parent), os.environ["PATH"]])
    res = subprocess.run(["gt", "rig", "list"], capture_output=True, text=True,
                         env=_env(PATH=path, REC_OUT=str(out)))
    assert res.returncode == 0, res.stderr
    assert out.with_suffix(".argv").read_bytes() == b"rig\0list\0"


def test_no_real_gt_is_one_line_error(shim: Path) -> None:
    res = subprocess.run([str(shim), "version"], capture_output=True, text=True,
                         env=_env(PATH="/usr/bin:/bin"))
    assert res.returncode == 127
    assert res.stderr.count("\n") == 1 and "real gt" in res.stderr


def test_model_bogus_is_one_line_exit_2(shim: Path) -> None:
    res = subprocess.run([str(shim), "model", "bogus"], capture_output=True, text=True, env=_env())
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and "bogus" in res.stderr
    assert res.stdout == ""


def test_install_refuses_to_overwrite_a_real_binary(tmp_path: Path) -> None:
    _recorder(tmp_path / "bin" / "gt")
    with pytest.raises(GtExtError, match="not the gt-ext shim"):
        install_shim([tmp_path / "bin"])


def test_install_shim_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-shim", "--bin-dir", str(tmp_path / "ub"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    installed = tmp_path / "ub" / "gt"
    assert os.access(installed, os.X_OK) and render_shim() == installed.read_text()
    assert (Path(sys.executable).parent / "gt").read_text() == render_shim()


# -- with the real gt ---------------------------------------------------------------------------
@pytest.mark.integration
def test_gt_version_matches_real(shim: Path, gt_bin: str, tmp_path: Path) -> None:
    env = _env(GT_REAL_BIN=gt_bin, HOME=str(tmp_path))
    real = subprocess.run([gt_bin, "version"], capture_output=True, text=True, env=env, cwd=tmp_path)
    via = subprocess.run([str(shim), "version"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert (via.returncode, via.stdout, via.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.stdout.strip()


@pytest.mark.integration
def test_foreign_formula_reaches_real_gt_unchanged(shim: Path, gt_bin: str, tmp_path: Path) -> None:
    env = _env(GT_REAL_BIN=gt_bin, HOME=str(tmp_path))
    argv = ["formula", "run", "no-such-formula-of-anyone", "role=polecat"]
    real = subprocess.run([gt_bin, *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
    via = subprocess.run([str(shim), *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert real.returncode != 0  # real gt takes one positional only / knows no such formula
    assert (via.returncode, via.stdout, via.stderr) == (real.returncode, real.stdout, real.stderr)


# -- issue #20: discoverability through the shim ----------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], [], ["help"], ["-h"]])
def test_gt_help_through_the_shim_lists_our_commands(shim: Path, argv: list[str]) -> None:
    from gt_ext.gastown.binaries import find_gt

    real = find_gt(required=False)
    if real is None:
        pytest.skip("the real gt is not installed")
    res = subprocess.run([str(shim), *argv], capture_output=True, text=True, env=_env(GT_REAL_BIN=str(real)))
    assert res.returncode == 0, res.stderr
    head, sep, ours = res.stdout.partition("Fine-tuning (gastown-finetune")
    assert sep and "Usage:" in head and "sling" in head  # gt's own help, unchanged before ours
    assert "corpus " in ours and "model " in ours and "formula run" in ours and "train-role-model" in ours
    assert ours.index("train-role-model") < ours.index("Flags:")  # listed before gt's Flags section


def test_gt_help_keeps_the_real_exit_code(shim: Path, tmp_path: Path) -> None:
    rec = _recorder(tmp_path / "real" / "gt")
    res = subprocess.run([str(shim), "--help"], capture_output=True, text=True,
                         env=_env(GT_REAL_BIN=str(rec), REC_OUT=str(tmp_path / "rec"), REC_CODE="5"))
    assert res.returncode == 5 and res.stdout.startswith("to stdout\n") and "corpus " in res.stdout


def test_usage_lines_and_errors_say_gt_when_called_as_gt(shim: Path) -> None:
    res = subprocess.run([str(shim), "corpus", "list", "--status", "bogus"], capture_output=True, text=True,
                         env=_env())
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "gt-ext" not in res.stderr, res.stderr
    res = subprocess.run([str(shim), "help", "model"], capture_output=True, text=True, env=_env())
    # The command is named gt; file names such as settings/gt-ext.json may still appear in help text.
    named = re.findall(r"gt-ext(?![.\w/-])", res.stdout)
    assert res.returncode == 0 and "Usage: gt model" in res.stdout and not named, res.stdout
    res = subprocess.run([str(shim), "model", "deploy", "--help"], capture_output=True, text=True, env=_env())
    assert "Usage: gt model deploy" in res.stdout
