"""`gt-ext models list|generate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gt_ext.cli import main


def test_list_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path))  # no registered bases
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"smollm2-135m-instruct", "tiny-llama"}
    assert all(isinstance(r["cached"], bool) for r in rows)


def test_unknown_model_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "generate", "bogus", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smollm2-135m-instruct" in err and "tiny-llama" in err


def test_bad_option_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "generate", "tiny-llama", "hi", "--max-new-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-new-tokens" in err


def test_generate_tiny_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "generate", "tiny-llama", "hello", "--max-new-tokens", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny-llama" and 1 <= out["new_tokens"] <= 5 and isinstance(out["output"], str)


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, gt_ext.models.cli, gt_ext.shim_cli; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


@pytest.mark.integration
def test_smollm2_answers_sensibly() -> None:
    """The real base model, through the installed CLI: 2+2 should come back as 4."""
    exe = Path(sys.executable).parent / "gt-ext"
    res = subprocess.run([str(exe), "models", "generate", "smollm2-135m-instruct", "What is 2+2?",
                          "--max-new-tokens", "24", "--json"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-500:]
    out = json.loads(res.stdout)
    assert "4" in out["output"]
