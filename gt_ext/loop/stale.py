"""Is a deployed role model stale? Compare what it was trained on with the town now.

    reports = check(town_root, role="witness")        # one StaleReport per deployment of the role

For each deployment of the role (town and rigs) the check reads the model's convention
fingerprint (`conventions.json`, taken at training time), the town's conventions now, and the
corpus, and reports:
- the convention items that changed since training (CLAUDE.md/AGENTS.md, formulas, settings,
  directives, `gt prime` output), each with a short diff summary; items unreadable now are
  listed per item (never a crash); an item put back to an older version is a *reversion*: it goes
  to the corpus review queue and does not count (it must not silently win);
- the corpus examples of the role that arrived since training, and the deployed model's loss on
  them against its own validation loss at the end of training;
- a score and a verdict: `fresh` (nothing changed), `drifting` (changes below the threshold),
  `stale` (score >= threshold), `unknown` (trained without a fingerprint).

While a model is not fresh, RAG ranks the changed files higher for its role (`gt_ext.rag.boost`):
the agent sees the new conventions before a retrained model knows them. A stale model gets ONE
retrain job bead per role (`gt_ext.loop.retrain`, with a cooldown), unless a retrained version that
is fresh is already registered: then that candidate is named, and the open request is closed.

Thresholds live in `<town>/settings/gt-ext.json` under "stale" (`StaleConfig`); the defaults: any
change of a doc, directive or the role's `gt prime` output (weight 1.0 each) is stale; a formula
(0.5) or settings (0.25) change alone is drift; so are new examples below 50 or 25% of the trained
corpus; a loss on new examples 25% above the validation loss counts 1.0; a retrain request at most
once a day per role.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gt_ext.errors import ConfigError, GtExtError
from gt_ext.loop import fingerprint as fpmod

log = logging.getLogger(__name__)

SELF_SOURCE = "node0-jsonl"  # a served model's own sessions: new examples, but not new knowledge


class NothingDeployed(GtExtError):
    """No model of the role is deployed in the town."""


@dataclass
class StaleConfig:
    """Thresholds of the staleness check (`<town>/settings/gt-ext.json`, key "stale")."""

    retrain_score: float = 1.0  # score at which a model is stale and a retrain is requested
    cooldown_hours: float = 24.0  # at most one retrain request per role in this time
    weights: dict[str, float] = field(default_factory=lambda: {
        "doc": 1.0, "directive": 1.0, "prime": 1.0, "formula": 0.5, "settings": 0.25})
    min_new_examples: int = 50  # new examples count (score 1.0) from this many ...
    new_examples_ratio: float = 0.25  # ... and this share of the examples trained on
    loss_ratio: float = 1.25  # loss on new examples / validation loss that counts (score 1.0)
    loss_examples: int = 32  # newest new examples the loss is measured on
    min_loss_examples: int = 4  # fewer than this: no loss verdict
    retrain: bool = True  # open retrain requests (off: report only)
    boost: bool = True  # RAG boosts changed files while a model is not fresh

    @classmethod
    def from_settings(cls, data: dict[str, Any], where: str = "stale") -> StaleConfig:
        """Build from a settings dict; an unknown key or a bad value is a loud error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(known))})")
        cfg = cls()
        for k, v in data.items():
            default = getattr(cfg, k)
            if isinstance(default, dict):
                if not isinstance(v, dict) or not all(isinstance(x, int | float) for x in v.values()):
                    raise ConfigError(f"{where}.{k}: expected an object of numbers")
                v = {**default, **{str(a): float(b) for a, b in v.items()}}
            elif isinstance(default, bool):
                if not isinstance(v, bool):
                    raise ConfigError(f"{where}.{k}: expected true or false")
            elif not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{where}.{k}: expected a number >= 0")
            setattr(cfg, k, type(default)(v) if not isinstance(default, dict) else v)
        return cfg


def load_config(town_root: str | Path) -> StaleConfig:
    """The town's staleness thresholds (defaults for what it does not set)."""
    from gt_ext.gastown.settings import PROJECT_SETTINGS, project_settings

    data = project_settings(town_root).get("stale") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{Path(town_root) / 'settings' / PROJECT_SETTINGS}: \"stale\" must be an object")
    return StaleConfig.from_settings(data, f"settings/{PROJECT_SETTINGS}: stale")


@dataclass
class StaleReport:
    """The staleness of one deployment of a role model."""

    role: str
    rig: str  # "" = town
    model: str
    verdict: str = "unknown"
    score: float = 0.0
    threshold: float = 1.0
    trained: float | None = None  # fingerprint time
    reasons: list[str] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    reverted: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    new_examples: int = 0
    new_self_outputs: int = 0
    trained_examples: int = 0
    loss: dict[str, Any] = field(default_factory=dict)
    candidate: str | None = None
    retrain: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _val_loss(rec: Any) -> tuple[float | None, int]:
    """(validation loss at the end of training, the run's max_length) from the model's run.json."""
    from gt_ext.registry.model_files import read_run_json

    try:
        run = read_run_json(Path(rec.path))
    except GtExtError:
        return None, 1024
    m = run.get("metrics") or {}
    ml = ((run.get("config") or {}).get("data") or {}).get("max_length") or 1024
    v = m.get("val_loss_end")
    return (float(v) if isinstance(v, int | float) else None), int(ml)


def _new_examples(store: Any, role: str, since: float) -> list[Any]:
    from gt_ext.corpus.store import StoredExample

    rows = store.db.execute("SELECT * FROM examples WHERE role = ? AND status = 'active' AND created > ? "
                            "AND messages IS NOT NULL ORDER BY created DESC", (role, since)).fetchall()
    return [StoredExample.from_row(r) for r in rows]


def _candidate(reg: Any, rec: Any, current_digest: str) -> str | None:
    """A registered version of the deployed model's name, newer than it, trained on the
    conventions of now (same digest): the retrained model waiting for a deliberate deploy."""
    for other in sorted((r for r in reg.list() if r.name == rec.name and r.version > rec.version),
                        key=lambda r: -r.version):
        try:
            fp = fpmod.read_fingerprint(other.path)
        except GtExtError:
            continue
        if fp is not None and fp.get("digest") == current_digest:
            return other.ref
    return None


def check_deployment(town_root: Path, reg: Any, store: Any, role: str, rig: str, model_ref: str,
                     current: dict[str, Any], cfg: StaleConfig, loss: bool = True) -> StaleReport:
    """The report for one deployment (see the module docstring); no side effects but the
    reversion flags in the corpus store."""
    from gt_ext.corpus.artifacts import flag_reversion

    rep = StaleReport(role=role, rig=rig, model=model_ref, threshold=cfg.retrain_score)
    rec = reg.get(model_ref)
    try:
        fp = fpmod.read_fingerprint(rec.path)
    except GtExtError as e:
        rep.reasons.append(str(e))
        return rep
    if fp is None:
        rep.reasons.append(f"{model_ref} was trained without a convention fingerprint: retrain it with "
                           "`gt formula run improve-role` to track it")
        return rep
    rep.trained = float(fp.get("time") or 0.0)
    rep.trained_examples = int(((fp.get("corpus") or {}).get("examples") or {}).get(role, 0))
    diff = fpmod.compare(fp, current)
    rep.unreadable = [c.to_dict() for c in diff.unreadable]
    score = 0.0
    for c in diff.changed:
        if c.sha256 and flag_reversion(store, c.key, c.sha256):
            rep.reverted.append(c.to_dict() | {"summary": "back to an earlier version: in the corpus review queue"})
            continue
        rep.changed.append(c.to_dict())
        w = cfg.weights.get(c.kind, 1.0)
        score += w
        rep.reasons.append(f"{c.key} {c.change} ({c.summary}; weight {w:g})")
    since = float((fp.get("corpus") or {}).get("newest") or rep.trained)
    new = _new_examples(store, role, since)
    rep.new_self_outputs = sum(e.source == SELF_SOURCE for e in new)
    fresh_data = [e for e in new if e.source != SELF_SOURCE]
    rep.new_examples = len(fresh_data)
    if rep.new_examples >= cfg.min_new_examples and rep.new_examples >= cfg.new_examples_ratio * max(rep.trained_examples, 1):
        score += 1.0
        rep.reasons.append(f"{rep.new_examples} new examples since training ({rep.trained_examples} trained on)")
    val, max_length = _val_loss(rec)
    rep.loss = {"val": val, "new": None, "ratio": None, "examples": 0}
    if loss and len(fresh_data) >= cfg.min_loss_examples and val:
        from gt_ext.train.evalloss import mean_loss

        sample = fresh_data[: cfg.loss_examples]
        new_loss, n, _tok = mean_loss(model_ref, [e.messages for e in sample], max_length=max_length, town=town_root)
        if new_loss is not None:
            ratio = new_loss / val
            rep.loss = {"val": round(val, 4), "new": round(new_loss, 4), "ratio": round(ratio, 3), "examples": n}
            if ratio >= cfg.loss_ratio:
                score += 1.0
                rep.reasons.append(f"loss on {n} new examples {new_loss:.3f} is {ratio:.2f}x the validation loss {val:.3f}")
    rep.score = round(score, 3)
    rep.verdict = "stale" if score >= cfg.retrain_score else ("drifting" if score > 0 else "fresh")
    current_digest = fpmod.digest({k: fpmod.item_record(v) for k, v in current.items()})
    rep.candidate = _candidate(reg, rec, current_digest)
    return rep


def check(town_root: str | Path, role: str | None = None, retrain: bool | None = None, loss: bool = True,
          prime: bool = True) -> list[StaleReport]:
    """Check every deployed model (of `role`, or of every role) of a town; see the module docstring.

    `retrain`: open retrain requests for stale models (None: as configured). RAG boosts are set or
    cleared per role as the verdicts say."""
    from gt_ext.corpus.store import Store
    from gt_ext.gastown.conventions import read_conventions
    from gt_ext.gastown.town import find_town
    from gt_ext.loop.retrain import close_request, open_request, request_retrain
    from gt_ext.rag.boost import set_boost
    from gt_ext.registry import Registry

    root = Path(town_root).resolve()
    town = find_town(root)
    if town is None:
        raise GtExtError(f"{root}: not a Gas Town (no mayor/town.json)")
    cfg = load_config(root)
    with Registry.open(town) as reg:
        live = sorted((k, d) for k, d in reg.live().items() if role is None or k[0] == role)
        if not live:
            raise NothingDeployed(f"no model is deployed{' for ' + role if role else ''} in {root} (`gt model deploy`)")
        reports: list[StaleReport] = []
        with Store.open(town=root) as store:
            conventions: dict[str, dict[str, Any]] = {}
            for (r, rig), dep in live:
                if not dep.model:
                    continue
                if r not in conventions:
                    conventions[r] = read_conventions(root, r, prime=prime)
                reports.append(check_deployment(root, reg, store, r, rig, dep.model, conventions[r], cfg, loss=loss))
    do_retrain = cfg.retrain if retrain is None else retrain
    for r in sorted({x.role for x in reports}):
        mine = [x for x in reports if x.role == r]
        if cfg.boost:
            sources = sorted({f"file:{c['path']}" for x in mine if x.verdict != "fresh" for c in x.changed if c.get("path")})
            set_boost(root, r, sources, reason=f"{r} model trained before these changed")
        stale = [x for x in mine if x.verdict == "stale"]
        if not stale:
            continue
        if all(x.candidate for x in stale):
            closed = close_request(root, r, f"retrained: {', '.join(sorted({x.candidate for x in stale}))} is "
                                            "registered and fresh; deploy it with `gt model deploy`")
            for x in stale:
                x.retrain = {"skipped": f"fresh candidate {x.candidate} waits for `gt model deploy`", "closed": closed}
            continue
        if not do_retrain:
            bead = open_request(root, r)
            for x in stale:
                x.retrain = {"skipped": "retrain requests are off", "open_bead": bead}
            continue
        req = request_retrain(root, r, [x.reasons[0] for x in stale if x.reasons] or ["stale"],
                              cooldown_s=cfg.cooldown_hours * 3600)
        for x in stale:
            x.retrain = req.to_dict()
    return reports


def needs_retrain(reports: list[StaleReport]) -> bool:
    """What the improve-role formula acts on: a stale model with no fresh candidate registered yet,
    or one trained without a fingerprint (one retrain gives it one)."""
    return any((r.verdict == "stale" and not r.candidate) or r.verdict == "unknown" for r in reports)


__all__ = ["NothingDeployed", "StaleConfig", "StaleReport", "check", "check_deployment", "load_config", "needs_retrain"]

