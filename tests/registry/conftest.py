"""Fixtures for the registry tests: real tiny-llama PEFT adapters in run/export folders, a town
folder tree with gt's settings files, and a `registry` opened on each metadata backend.

The Dolt backend runs against a real `dolt sql-server` (one per session, a fresh database per
test); it is skipped, saying why, when `dolt` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gt_ext.digest import sha256_file

BASE = "tiny-llama"
# Keys gt writes that the registry must never drop or reorder.
TOWN_SETTINGS = {"type": "town-settings", "version": 1, "default_agent": "claude",
                 "agents": {"opus-46": {"command": "claude", "args": ["--model", "opus"]}},
                 "role_agents": {"refinery": "opus-46"}, "cli_theme": "dark", "x_unknown": {"keep": [1, 2]}}

RIG_SETTINGS = {"type": "rig-settings", "version": 1, "namepool": {"style": "wasteland"}}


@pytest.fixture(scope="session")
def adapter_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter (r=4, q/v) of the tiny-llama base, saved once per session."""
    from peft import LoraConfig, get_peft_model

    from gt_ext.models import load_model

    model, _tok = load_model(BASE)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(str(out))
    return out


def _run_json(role: str, task: str | None, status: str = "done", parent: str | None = None) -> dict:
    return {"role": role, "task": task, "base_model": BASE, "config": {"lr": 2e-4, "epochs": 1},
            "corpus_hash": "c0ffee" * 10 + "abcd", "examples": 42, "dpo_pairs": 7,
            "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
            "metrics": {"val_loss_start": 3.2, "val_loss_end": 2.9, "steps": 5, "tokens_per_s": 100.0},
            "status": status, "parent": parent}


@pytest.fixture
def make_run(adapter_template: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: a run folder (adapter/ + run.json + checkpoints/) for `role` (and `task`)."""

    def make(role: str = "witness", task: str | None = None, status: str = "done") -> Path:
        d = tmp_path / f"run-{uuid.uuid4().hex[:8]}"
        shutil.copytree(adapter_template, d / "adapter")
        (d / "run.json").write_text(json.dumps(_run_json(role, task, status)))
        (d / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
        (d / "checkpoints" / "step-5").mkdir(parents=True)
        (d / "checkpoints" / "step-5" / "optimizer.pt").write_bytes(b"not copied")
        return d

    return make


@pytest.fixture
def make_export(adapter_template: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: an export folder (adapter/, merged/, a GGUF stand-in file, run.json, manifest.json)."""

    def make(role: str = "witness", task: str | None = None) -> Path:
        d = tmp_path / f"export-{uuid.uuid4().hex[:8]}"
        shutil.copytree(adapter_template, d / "adapter")
        (d / "merged").mkdir()
        (d / "merged" / "config.json").write_text(json.dumps({"model_type": "llama"}))
        # The registry only checksums and copies the GGUF; its bytes are not parsed here.
        (d / "model-q8_0.gguf").write_bytes(b"GGUF" + os.urandom(64))
        (d / "run.json").write_text(json.dumps(_run_json(role, task)))
        files = {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}
        (d / "manifest.json").write_text(json.dumps({"files": files, "base_model": BASE, "role": role}))
        return d

    return make


@pytest.fixture
def original_town_settings() -> dict:
    """The town settings `town_dir` starts with (a deep copy)."""
    return json.loads(json.dumps(TOWN_SETTINGS))


from gate_results import GATE_SUITE, eval_result  # noqa: E402 - helpers beside the tests


@pytest.fixture
def passed(town_dir: Path) -> Callable:
    """`passed(registry, ref, deployable=True)`: record a full run of the town's gating suite."""

    def record(registry, ref: str, deployable: bool = True, **kw):
        rec = registry.get(ref)
        return registry.record_eval(ref, eval_result(town_dir / "suites" / "gate", rec.role, deployable, **kw))

    return record


@pytest.fixture
def town_dir(tmp_path: Path) -> Path:
    """A town folder tree as gt lays it out (mayor/town.json, rigs.json, settings, rig `demo`), whose
    gt-ext settings name a one-task suite (`suites/gate`) as every role's gating suite."""
    root = tmp_path / "town"
    (root / "mayor").mkdir(parents=True)
    (root / "mayor" / "town.json").write_text(json.dumps({"type": "town", "version": 2, "name": "t"}))
    (root / "mayor" / "rigs.json").write_text(json.dumps({"version": 1, "rigs": {"demo": {"beads": {"prefix": "dm"}}}}))
    (root / "settings").mkdir()
    (root / "settings" / "config.json").write_text(json.dumps(TOWN_SETTINGS, indent=2) + "\n")
    (root / "demo" / "settings").mkdir(parents=True)
    (root / "demo" / "settings" / "config.json").write_text(json.dumps(RIG_SETTINGS, indent=2) + "\n")
    (root / "suites" / "gate").mkdir(parents=True)
    (root / "suites" / "gate" / "promptfooconfig.yaml").write_text(GATE_SUITE)
    from gt_ext.roles import ROLES

    (root / "settings" / "gt-ext.json").write_text(json.dumps(
        {"evals": {"gate_suites": {r: "suites/gate" for r in ROLES}}}))
    return root


@pytest.fixture(scope="session")
def _dolt_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One real dolt sql-server for the registry tests (skipped when dolt is missing)."""
    from gt_ext.gastown.binaries import find_dolt
    from gt_ext.gastown.dolt import DoltServer

    if find_dolt(required=False) is None:
        pytest.skip("dolt is not installed (run ./install.sh): Dolt backend not tested")
    base = tmp_path_factory.mktemp("dolt")
    env = dict(os.environ, DOLT_ROOT_PATH=str(base / "home"), HOME=str(base / "home"))
    (base / "home").mkdir()
    server = DoltServer(base / "data", env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "dolt"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each registry test runs on both metadata backends."""
    if request.param == "dolt":
        server = request.getfixturevalue("_dolt_session")
        monkeypatch.setenv("GT_DOLT_PORT", str(server.port))
        monkeypatch.setenv("GT_EXT_REGISTRY_DB", f"reg_{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("GT_EXT_REGISTRY_BACKEND", request.param)
    return request.param


@pytest.fixture
def registry(backend: str, town_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A Registry of `town_dir` on the backend under test (GT_TOWN_ROOT points at the town)."""
    from gt_ext.registry import Registry

    monkeypatch.setenv("GT_TOWN_ROOT", str(town_dir))
    reg = Registry.open(town_dir)
    try:
        yield reg
    finally:
        reg.close()
