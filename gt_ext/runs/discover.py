"""Training runs on disk, read into one shape whatever made them (local trainer, swarm peer,
pipeline stages: all write the run folder of CONTRACTS.md).

Where runs are looked for: `$GT_EXT_HOME/runs/` (`gt-ext train`'s default `--out`), the job folders
(`<town>/.gt-ext/jobs/*/run` or `$GT_EXT_HOME/jobs/*/run`, written by `train-role-model`) and any
extra root given. A run is a folder with run.json and metrics.jsonl or adapter/ (an export folder,
which has a manifest.json, is not a run).

    runs = discover()                       # [RunInfo], newest first
    run = resolve("witness:2", runs)        # a folder, a registry NAME:VER or a run id
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

MAX_DEPTH = 3


@dataclass
class RunInfo:
    """One run folder, summarised (see module doc)."""

    id: str
    path: str
    kind: str  # local | swarm | pipeline
    role: str | None
    task: str | None
    mode: str
    status: str | None
    base_model: str | None
    config: dict[str, Any]
    corpus_hash: str | None
    examples: int
    dpo_pairs: int
    steps: int | None
    wall_s: float | None
    cpu_s: float | None
    tokens_per_s: float | None
    val_loss_start: float | None
    val_loss_end: float | None
    parent: str | None
    updated: str | None
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite -> {categories, composite, deployable}
    registered: str | None = None  # registry name:ver
    run_json_sha: str = ""

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """JSON-ready dict (loss curves as [step, loss] lists unless `curves` is False)."""
        d = asdict(self)
        if not curves:
            d.pop("train_loss")
            d.pop("val_loss")
        return d


def is_run_folder(p: Path) -> bool:
    """run.json plus metrics.jsonl or adapter/, and not an export (no manifest.json)."""
    return (p / "run.json").is_file() and not (p / "manifest.json").is_file() and (
        (p / "metrics.jsonl").is_file() or (p / "adapter").is_dir())


def default_roots() -> list[Path]:
    """The folders runs are written to by this project's commands."""
    from gt_ext.jobs.places import jobs_root
    from gt_ext.paths import home_dir

    return [home_dir() / "runs", jobs_root()]


def _walk(root: Path, depth: int = 0) -> list[Path]:
    if depth > MAX_DEPTH or not root.is_dir():
        return []
    if is_run_folder(root):
        return [root]
    out = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and p.name not in ("checkpoints", "adapter", "merged", "export"))
    except OSError:
        return []
    for c in children:
        out += _walk(c, depth + 1)
    return out


def _metrics(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]], list[dict[str, Any]]]:
    """(train loss points, validation loss points, every row) of a run's metrics.jsonl."""
    from gt_ext.train.runfolder import MetricsLog

    train, val = [], []
    try:
        rows = MetricsLog(run_dir).read()
    except (json.JSONDecodeError, OSError) as e:
        log.warning("%s/metrics.jsonl: unreadable (%s), no curves", run_dir, e.__class__.__name__)
        rows = []
    for r in rows:
        if isinstance(r.get("loss"), (int, float)) and "step" in r:
            train.append((int(r["step"]), float(r["loss"])))
        if isinstance(r.get("val_loss"), (int, float)) and "step" in r:
            val.append((int(r["step"]), float(r["val_loss"])))
    return train, val, rows


def _eval_files(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(folder.glob("eval-*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("%s: unreadable eval result, skipped", p)
            continue
        cats = {c: v.get("score") for c, v in (r.get("categories") or {}).items() if isinstance(v, dict)}
        out[str(r.get("suite") or p.stem[len("eval-"):])] = {
            "categories": cats, "composite": r.get("composite"),
            "deployable": (r.get("gate") or {}).get("deployable")}
    return out


def load_run(path: str | os.PathLike, run_id: str | None = None) -> RunInfo:
    """Read one run folder (GtExtError naming the file when it is not one)."""
    from gt_ext.train.runfolder import read_run_json

    p = Path(path)
    run = read_run_json(p)
    if run is None:
        raise GtExtError(f"{p}: not a run folder (no run.json)")
    raw = (p / "run.json").read_bytes()
    train, val, rows = _metrics(p)
    m = run.get("metrics") or {}
    cfg = run.get("config") or {}
    kind = "swarm" if run.get("swarm") else "pipeline" if run.get("pipeline") else "local"
    wall = m.get("train_wall_s")
    if wall is None and rows and rows[-1].get("elapsed_s") is not None:
        wall = rows[-1]["elapsed_s"]
    evals = _eval_files(p)
    if (p.parent / "export").is_dir():  # a formula job: run/ and export/ side by side
        evals = {**_eval_files(p.parent / "export"), **evals}
    rid = run_id or (p.parent.name if p.name == "run" else p.name)
    return RunInfo(
        id=rid, path=str(p.resolve()), kind=kind, role=run.get("role"), task=run.get("task"),
        mode=str(cfg.get("mode") or "sft"), status=run.get("status"), base_model=run.get("base_model"),
        config=cfg, corpus_hash=run.get("corpus_hash"), examples=int(run.get("examples") or 0),
        dpo_pairs=int(run.get("dpo_pairs") or 0), steps=m.get("steps"), wall_s=wall, cpu_s=m.get("train_cpu_s"),
        tokens_per_s=m.get("tokens_per_s"), val_loss_start=m.get("val_loss_start"),
        val_loss_end=m.get("val_loss_end"), parent=run.get("parent"), updated=run.get("updated"),
        train_loss=train, val_loss=val, evals=evals, run_json_sha=hashlib.sha256(raw).hexdigest())


def discover(roots: list[Path] | None = None) -> list[RunInfo]:
    """Every run under `roots` (default: `default_roots()`), newest first; ids made unique."""
    seen: set[Path] = set()
    runs: list[RunInfo] = []
    for root in roots if roots is not None else default_roots():
        for folder in _walk(Path(root)):
            real = folder.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                runs.append(load_run(folder))
            except GtExtError as e:
                log.warning("skipping %s: %s", folder, e)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.id] = counts.get(r.id, 0) + 1
    for r in runs:
        if counts[r.id] > 1:
            r.id = f"{r.id}@{Path(r.path).parent.name}"
    return sorted(runs, key=lambda r: (r.updated or "", r.id), reverse=True)


def attach_registry(runs: list[RunInfo], registry: Any) -> None:
    """Fill `registered` (and the registry's eval result) for runs that were registered: an export's
    `source_run`, or a version folder holding the same run.json."""
    by_source: dict[str, Any] = {}
    by_sha: dict[str, Any] = {}
    for rec in registry.list():
        try:
            man = json.loads((rec.path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            man = {}
        if man.get("source_run"):
            by_source[str(Path(man["source_run"]).resolve())] = rec
        rj = rec.path / "run.json"
        if rj.is_file():
            by_sha.setdefault(hashlib.sha256(rj.read_bytes()).hexdigest(), rec)
    for r in runs:
        rec = by_source.get(r.path) or by_sha.get(r.run_json_sha)
        if rec is None:
            continue
        r.registered = rec.ref
        if rec.eval_categories or rec.eval_composite is not None:
            r.evals.setdefault("registry", {
                "categories": {c: v.get("score") for c, v in rec.eval_categories.items() if isinstance(v, dict)},
                "composite": rec.eval_composite,
                "deployable": None if rec.gate is None else rec.gate == "pass"})


def resolve(ref: str, runs: list[RunInfo], registry: Any | None = None) -> RunInfo:
    """A run by folder path, registry NAME:VER, or id (GtExtError listing what was tried)."""
    p = Path(ref).expanduser()
    if p.is_dir():
        real = str(p.resolve())
        return next((r for r in runs if r.path == real), None) or load_run(p)
    for r in runs:
        if r.id == ref:
            return r
    if registry is not None:
        from gt_ext.registry.cli import run_of

        try:
            rec = registry.get(ref)
        except GtExtError:
            rec = None
        if rec is not None:
            folder = run_of(rec)
            if folder is None:
                raise GtExtError(f"{rec.ref}: the registry keeps no run for it ({rec.path} has no run.json)")
            real = str(folder.resolve())
            run = next((r for r in runs if r.path == real), None) or load_run(folder, run_id=rec.ref)
            run.registered = run.registered or rec.ref
            return run
    raise GtExtError(f"unknown run {ref!r}: not a folder, a run id of `gt-ext runs list` or a registry NAME:VER")
