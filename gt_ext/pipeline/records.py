"""What stages announce and how a trainer turns announcements into a route through the layers.

Every stage server stores a record under `{run}_stages` in the DHT (subkey: its peer id) every
couple of seconds; it expires a few seconds after the stage stops. A record says which layers the
stage serves, the base model's fingerprint, the fingerprint of the training settings every stage
must share, and live counters. `plan_route` checks that the live stages tile every layer with one
base model and one configuration, and groups replicas of the same span.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.train.config import TrainConfig

_RUN = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def check_run(run: str) -> str:
    """A pipeline run name: letters, digits and '-', at most 64. It prefixes DHT keys and expert ids,
    and node0's matchmaking cuts averaging keys at the first '_'."""
    if not _RUN.match(run or ""):
        raise GtExtError(f"run name {run!r}: use 1-64 letters, digits or '-'")
    return run


def stage_prefix(run: str, first: int, last: int) -> str:
    """Expert-uid prefix (and hivemind averaging run id) of the replicas of one span."""
    return f"{run}-L{first}-{last}"


def stages_key(run: str) -> str:
    """DHT key of a run's stage announcements (subkey: the stage's peer id, hex)."""
    return f"{run}_stages"


def read_stage_records(dht: Any, run: str) -> list[StageRecord]:
    """The live stage announcements of a run (expired ones are gone from the DHT)."""
    found = dht.get(stages_key(run), latest=True)
    out = []
    if found is not None and isinstance(found.value, dict):
        for entry in found.value.values():
            rec = StageRecord.from_value(getattr(entry, "value", None))
            if rec is not None:
                out.append(rec)
    return out


def stage_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings every stage and the trainer must share (LoRA, optimizer, schedule)."""
    o = cfg.optim
    return {
        "lora": cfg.lora.model_dump(mode="json"),
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "max_steps": cfg.max_steps,
        "optim": {"lr": o.lr, "weight_decay": o.weight_decay, "betas": list(o.betas), "eps": o.eps,
                  "warmup_steps": o.warmup_steps, "min_lr_ratio": o.min_lr_ratio, "grad_accum": o.grad_accum,
                  "grad_clip": o.grad_clip},
    }


def settings_fingerprint(cfg: TrainConfig, compression_rate: int | None = None) -> str:
    """Short hash of `stage_settings` (+ the compression rate): equal on every member of a pipeline."""
    blob = json.dumps({"settings": stage_settings(cfg), "compression": compression_rate}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class StageRecord:
    """One live stage replica, as announced."""

    peer: str  # base58 peer id
    uid: str
    first: int
    last: int
    total: int
    base_hash: str
    settings_hash: str
    compression_rate: int | None = None
    epoch: int = 0
    state: str = "running"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def span_label(self) -> str:
        return f"layers {self.first}-{self.last - 1}"

    @classmethod
    def from_value(cls, value: Any) -> StageRecord | None:
        """Parse a DHT value; None when it is not a stage record."""
        if not isinstance(value, dict):
            return None
        try:
            return cls(peer=str(value["peer"]), uid=str(value["uid"]), first=int(value["first"]),
                       last=int(value["last"]), total=int(value["total"]), base_hash=str(value["base_hash"]),
                       settings_hash=str(value["settings_hash"]),
                       compression_rate=value.get("compression_rate"), epoch=int(value.get("epoch", 0)),
                       state=str(value.get("state", "running")), extra=dict(value))
        except (KeyError, TypeError, ValueError):
            return None


def uncovered(spans: list[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """Maximal runs of layers [a, b) that no span covers."""
    covered = [False] * total
    for a, b in spans:
        for i in range(max(a, 0), min(b, total)):
            covered[i] = True
    gaps, i = [], 0
    while i < total:
        if covered[i]:
            i += 1
            continue
        j = i
        while j < total and not covered[j]:
            j += 1
        gaps.append((i, j))
        i = j
    return gaps


def describe_gaps(gaps: list[tuple[int, int]]) -> str:
    """`layers 2-3, layers 7-7`."""
    return ", ".join(f"layers {a}-{b - 1}" for a, b in gaps)


def plan_route(
    records: list[StageRecord],
    run: str,
    base_hash: str | None = None,
    settings_hash: str | None = None,
) -> list[list[StageRecord]]:
    """Replicas grouped by span, in layer order, tiling [0, total) exactly. Raises a one-line
    GtExtError naming the problem: no stage at all, stages of different base models or settings
    (against each other, or against what the trainer expects), uncovered or overlapping layers."""
    if not records:
        raise GtExtError(f"pipeline run {run}: no live stage (start stages with `gt-ext pipeline stage --run {run}`)")
    bases = {r.base_hash for r in records}
    if len(bases) > 1 or (base_hash is not None and bases != {base_hash}):
        seen = "; ".join(sorted({f"{r.span_label}: base {r.base_hash}" for r in records}))
        want = f" (this trainer: base {base_hash})" if base_hash else ""
        raise GtExtError(f"pipeline run {run}: stages serve different base models, refusing to form a pipeline: {seen}{want}")
    settings = {r.settings_hash for r in records}
    if len(settings) > 1 or (settings_hash is not None and settings != {settings_hash}):
        seen = "; ".join(sorted({f"{r.span_label}: settings {r.settings_hash}" for r in records}))
        want = f" (this trainer: {settings_hash})" if settings_hash else ""
        raise GtExtError(f"pipeline run {run}: stages were started with different training settings "
                         f"(lora/optim/seed/steps; pass every stage the same --config): {seen}{want}")
    totals = {r.total for r in records}
    if len(totals) > 1:
        raise GtExtError(f"pipeline run {run}: stages disagree on the number of layers ({sorted(totals)})")
    total = totals.pop()
    groups: dict[tuple[int, int], list[StageRecord]] = {}
    for r in records:
        groups.setdefault((r.first, r.last), []).append(r)
    gaps = uncovered(list(groups), total)
    if gaps:
        raise GtExtError(f"pipeline run {run}: no live stage serves {describe_gaps(gaps)} of {total} layers")
    # Walk the layers: exactly one span must start where the previous one ended.
    route, at = [], 0
    while at < total:
        starting = sorted(k for k in groups if k[0] == at)
        if len(starting) != 1:
            spans = ", ".join(f"{a}:{b}" for a, b in sorted(groups))
            raise GtExtError(f"pipeline run {run}: stage spans overlap or do not chain at layer {at} ({spans})")
        key = starting[0]
        route.append(sorted(groups[key], key=lambda r: r.peer))
        at = key[1]
    return route
