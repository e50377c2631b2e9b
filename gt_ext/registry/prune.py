"""Which model versions `gt model prune --keep N` may delete, and why the others stay.

Never deleted: the newest N versions of each name, the newest version whose eval gate passed
("the last good one"), every version any live deployment uses or would roll back to (model or
task adapter), and every version a town or rig settings file launches now, whatever the history
says (a deploy killed before its history entry, a hand edit).
"""

from __future__ import annotations

from dataclasses import dataclass

from gt_ext.gastown import settings as gsettings
from gt_ext.gastown.town import Town
from gt_ext.registry.db import Deployment, ModelRecord
from gt_ext.registry.deploy import AGENT_COMMAND, PROVIDER, model_from_config, replay


@dataclass
class PrunePlan:
    """The outcome of planning: versions to delete, and the kept ones with the reason."""

    delete: list[ModelRecord]
    keep: list[tuple[ModelRecord, str]]


def protected_refs(history: list[Deployment]) -> set[str]:
    """Every `name:ver` a live deploy stack serves or can roll back to."""
    by_key: dict[tuple[str, str], list[Deployment]] = {}
    for d in history:
        by_key.setdefault((d.role, d.rig), []).append(d)
    refs: set[str] = set()
    for hist in by_key.values():
        for d in replay(hist):
            for state in (d.before, d.after):
                if state.get("model"):
                    refs.add(state["model"])
                refs.update(state.get("adapters") or [])
    return refs


def launched_refs(town: Town) -> set[str]:
    """Every `name:ver` (model or adapter) a node0 agent in the town's or a rig's settings runs."""
    refs: set[str] = set()
    for path in gsettings.settings_files(town):
        agents = gsettings.load(path).data.get("agents") or {}
        for cfg in agents.values() if isinstance(agents, dict) else []:
            if isinstance(cfg, dict) and (cfg.get("provider") == PROVIDER or cfg.get("command") == AGENT_COMMAND):
                model, adapters = model_from_config(cfg)
                refs.update([model] if model else [])
                refs.update(adapters)
    return refs


def plan(records: list[ModelRecord], history: list[Deployment], keep: int,
         launched: set[str] | None = None) -> PrunePlan:
    """Decide which versions go. `keep` >= 0 newest versions of each name are always kept;
    `launched` = refs settings files run now (`launched_refs`)."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    deployed = protected_refs(history)
    launched = launched or set()
    by_name: dict[str, list[ModelRecord]] = {}
    for r in records:
        by_name.setdefault(r.name, []).append(r)
    out = PrunePlan([], [])
    for versions in by_name.values():
        versions.sort(key=lambda r: r.version, reverse=True)
        last_good = next((r for r in versions if r.gate == "pass"), None)
        for i, r in enumerate(versions):
            if i < keep:
                out.keep.append((r, f"among the newest {keep}"))
            elif r.ref in launched:
                out.keep.append((r, "launched by a settings file"))
            elif r.ref in deployed:
                out.keep.append((r, "deployed (or a rollback target)"))
            elif last_good is not None and r is last_good:
                out.keep.append((r, "last version that passed its eval gate"))
            else:
                out.delete.append(r)
    return out
