"""Deploy a registered model to a role (town or rig settings) and roll it back.

Deploy writes exactly what gt reads (gt v1.0.1 `TownSettings` / `RigSettings`):

    agents["node0-<role>"] = {"provider": "node0", "command": "node0-inference",
                              "args": ["--model", "NAME:VER", "--adapters", "a:1,b:2",
                                       "--rag", "--rag-budget", "<role budget>"],
                              "tmux": {"process_names": ["node0-inference"],
                                       "ready_prompt_prefix": "node0> "}}
    role_agents[<role>]    = "node0-<role>"

through `gt_ext.gastown.settings` (every other key kept, atomic write, `.bak` backup), and appends
one entry to the deployment history. Rollback pops the newest deploy for that role and rig and
restores the settings state recorded before it.

All of it runs under an exclusive flock on `<settings dir>/.config.json.lock`, so concurrent
deploys and rollbacks of one settings file are serialized end to end (read settings, write
settings, append history).

Crash safety: before the settings file is written, an intent record (`gt_ext.registry.journal`)
holds the states before and after and how many history entries the role had; it is deleted once
the history entry is appended. A kill -9 in between leaves it behind, and the next registry
command (`recover_deploys`) makes settings and history agree again: an entry appended means the
command finished (settings are written first); otherwise settings go back to the state before.
"""

from __future__ import annotations

import copy
import getpass
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.gastown import settings as gsettings
from gt_ext.gastown.settings import GT_NEW_TOWN_SETTINGS
from gt_ext.gastown.town import Town
from gt_ext.registry.db import Deployment, MetaStore
from gt_ext.registry.journal import Journal
from gt_ext.registry.locks import file_lock
from gt_ext.roles import NOT_YET_DEPLOYABLE, ROLLOUT_ORDER, check_role

log = logging.getLogger(__name__)

PROVIDER = "node0"
AGENT_COMMAND = "node0-inference"
READY_PROMPT = "node0> "  # the serving agent prints exactly this when it is ready for a line
TOWN_SCOPE = ""  # the `rig` value of a town-level deployment
TOWN_ROLES = ("mayor", "deacon", "boot", "dog")  # one per town: their agent comes from town settings


def agent_name(role: str) -> str:
    """The agent name a deployment defines for `role`: `node0-<role>`."""
    return f"{PROVIDER}-{role}"


def runtime_config(model_ref: str, adapters: list[str], rag_budget: int | None = None) -> dict[str, Any]:
    """The gt RuntimeConfig for serving `model_ref` (NAME:VER) with task adapters (NAME:VER each);
    `rag_budget` (tokens) turns on the town's RAG context for every prompt, None leaves it off."""
    args = ["--model", model_ref]
    if adapters:
        args += ["--adapters", ",".join(adapters)]
    if rag_budget is not None:
        args += ["--rag", "--rag-budget", str(int(rag_budget))]
    return {"provider": PROVIDER, "command": AGENT_COMMAND, "args": args,
            "tmux": {"process_names": [AGENT_COMMAND], "ready_prompt_prefix": READY_PROMPT}}


def model_from_config(cfg: dict[str, Any] | None) -> tuple[str | None, list[str]]:
    """(model ref, adapters) read back from a node0 RuntimeConfig's args."""
    if not isinstance(cfg, dict):
        return None, []
    args = [str(a) for a in cfg.get("args") or []]
    model = args[args.index("--model") + 1] if "--model" in args[:-1] else None
    adapters = args[args.index("--adapters") + 1].split(",") if "--adapters" in args[:-1] else []
    return model, [a for a in adapters if a]


def read_state(sf: gsettings.SettingsFile, role: str) -> dict[str, Any]:
    """The part of a settings file a deployment of `role` owns, as a history state dict."""
    role_agent = (sf.data.get("role_agents") or {}).get(role)
    cfg = (sf.data.get("agents") or {}).get(agent_name(role))
    model, adapters = model_from_config(cfg) if role_agent == agent_name(role) else (None, [])
    return {"role_agent": role_agent, "agent_config": cfg, "model": model, "adapters": adapters}


def apply_state(sf: gsettings.SettingsFile, role: str, state: dict[str, Any]) -> None:
    """Make the settings' `role_agents[role]` and `agents["node0-<role>"]` match `state`."""
    if state.get("agent_config") is None:
        sf.remove_agent(agent_name(role))
    else:
        sf.set_agent(agent_name(role), state["agent_config"])
    sf.set_role_agent(role, state.get("role_agent"))


def replay(history: list[Deployment]) -> list[Deployment]:
    """The live deploy stack of one role+rig: deploys push, rollbacks pop (oldest first)."""
    stack: list[Deployment] = []
    for d in history:
        if d.action == "deploy":
            stack.append(d)
        elif d.action == "rollback" and stack:
            stack.pop()
    return stack


def current_deployments(store: MetaStore) -> dict[tuple[str, str], Deployment]:
    """{(role, rig): newest live deploy entry} for every role+rig whose stack is not empty."""
    by_key: dict[tuple[str, str], list[Deployment]] = {}
    for d in store.deployments():
        by_key.setdefault((d.role, d.rig), []).append(d)
    out = {}
    for key, hist in by_key.items():
        stack = replay(hist)
        if stack:
            out[key] = stack[-1]
    return out


def _actor() -> str:
    return os.environ.get("BD_ACTOR") or os.environ.get("GT_ACTOR") or getpass.getuser()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Target:
    """Where a deployment goes: town settings or one rig's settings."""

    town: Town
    rig: str  # TOWN_SCOPE for the town

    @property
    def label(self) -> str:
        """'town' or 'rig <name>' for messages."""
        return "town" if self.rig == TOWN_SCOPE else f"rig {self.rig}"

    def settings(self) -> gsettings.SettingsFile:
        """Load the settings file this target writes."""
        if self.rig == TOWN_SCOPE:
            sf = gsettings.town_settings(self.town)
            if not sf.exists:
                # gt treats a missing town settings file as NewTownSettings() (default_agent
                # "claude"); a file without default_agent would silently change every role's agent.
                sf.data = {**GT_NEW_TOWN_SETTINGS, **sf.data}
        else:
            sf = gsettings.rig_settings(self.town.rig(self.rig))
            if not sf.exists:
                # gt fills merge-queue and namepool defaults only when it scaffolds the file itself.
                raise GtExtError(f"{sf.path}: missing; let gt create it first "
                                 f"(`gt rig add`, or `gt rig settings set {self.rig} KEY VALUE`)")
        # gastown.settings.load hands out the parsed document's own dict; edit a copy so that
        # render() sees the change (it compares the new data against the parsed original).
        sf.data = copy.deepcopy(sf.data)
        return sf

    @property
    def lock_path(self) -> Path:
        """The lock file next to the settings file."""
        d = self.town.settings_dir if self.rig == TOWN_SCOPE else self.town.rig(self.rig).settings_dir
        return d / ".config.json.lock"


def rollout_blockers(role: str, rig: str, live: dict[tuple[str, str], Deployment]) -> list[str]:
    """Earlier rollout stages that have no role served by a node0 model in scope (town + `rig`)."""
    stage = next((i for i, roles in enumerate(ROLLOUT_ORDER) if role in roles), None)
    if stage is None:
        return []
    scopes = {TOWN_SCOPE, rig}
    missing = []
    for roles in ROLLOUT_ORDER[:stage]:
        if not any((r, s) in live for r in roles for s in scopes):
            missing.append("/".join(roles))
    return missing


def check_deployable_role(role: str) -> str:
    """`role` if a model may serve it in this version; GtExtError otherwise (mayor: always)."""
    check_role(role)
    if role in NOT_YET_DEPLOYABLE:
        raise GtExtError(f"cannot deploy to {role}: {NOT_YET_DEPLOYABLE[role]} (--force does not override this)")
    return role


def write_deploy(store: MetaStore, target: Target, role: str, model_ref: str, adapters: list[str],
                 reason: str, forced: bool, journal: Journal, rag_budget: int | None = None) -> Deployment:
    """Write settings for `role` to serve `model_ref` and append the history entry (under the lock)."""
    with file_lock(target.lock_path):
        sf = target.settings()
        before = read_state(sf, role)
        cfg = runtime_config(model_ref, adapters, rag_budget)
        after = {"role_agent": agent_name(role), "agent_config": cfg, "model": model_ref, "adapters": adapters}
        return _commit(store, target, sf, role, "deploy", before, after, reason, forced, journal)


def write_rollback(store: MetaStore, target: Target, role: str, journal: Journal, reason: str = "") -> Deployment:
    """Undo the newest live deploy of `role` at `target`: restore the state recorded before it."""
    with file_lock(target.lock_path):
        stack = replay(store.deployments(role=role, rig=target.rig))
        if not stack:
            raise GtExtError(f"nothing to roll back for {role} in {target.label} (no live deployment in the history)")
        top = stack[-1]
        sf = target.settings()
        before = read_state(sf, role)
        if before.get("agent_config") != top.after.get("agent_config") or before.get("role_agent") != top.after.get("role_agent"):
            log.warning("%s: %s settings were changed outside the registry since deployment #%d; "
                        "restoring the state before it anyway", sf.path, role, top.id)
        return _commit(store, target, sf, role, "rollback", before, dict(top.before),
                       reason or f"rollback of deployment #{top.id} ({top.model})", False, journal)


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("role_agent") == b.get("role_agent") and a.get("agent_config") == b.get("agent_config")


def _commit(store: MetaStore, target: Target, sf: gsettings.SettingsFile, role: str, action: str,
            before: dict[str, Any], after: dict[str, Any], reason: str, forced: bool,
            journal: Journal) -> Deployment:
    """Journal the intent, save settings, append history, forget the intent; if the append fails,
    put the settings back. A kill -9 anywhere is repaired by `recover_deploys`."""
    record = journal.begin("deploy", {"action": action, "role": role, "rig": target.rig, "before": before,
                                      "after": after, "history": len(store.deployments(role=role, rig=target.rig))})
    apply_state(sf, role, after)
    sf.save(backup=True)
    dep = Deployment(id=0, action=action, role=role, rig=target.rig, model=after.get("model"),
                     before=before, after=after, actor=_actor(), time=_now(), reason=reason, forced=forced)
    try:
        store.append_deployment(dep, f"{action} {role}@{target.label}: {before.get('model') or before.get('role_agent') or '-'}"
                                     f" -> {after.get('model') or after.get('role_agent') or '-'}")
    except BaseException:
        apply_state(sf, role, before)
        sf.save(backup=False)
        journal.end(record)
        raise
    journal.end(record)
    log.info("%s %s in %s: %s -> %s", action, role, target.label, before.get("role_agent"), after.get("role_agent"))
    return dep


def recover_deploys(store: MetaStore, town: Town, journal: Journal) -> list[str]:
    """Finish or undo deploys and rollbacks that a kill interrupted; returns what was done.

    Under the settings lock (a running deploy holds it, so its own record is never touched): if
    the role's history grew past the recorded length, the entry was appended and the command had
    finished; otherwise its settings write (if it happened) is undone.
    """
    done = []
    for path, rec in journal.pending("deploy"):
        target = Target(town, str(rec.get("rig", TOWN_SCOPE)))
        role = str(rec.get("role"))
        try:
            with file_lock(target.lock_path):
                if not path.exists():  # finished or recovered by another process meanwhile
                    continue
                if len(store.deployments(role=role, rig=target.rig)) > int(rec.get("history", 0)):
                    Journal.end(path)
                    continue
                sf = target.settings()
                if _same_state(read_state(sf, role), rec.get("after") or {}):
                    apply_state(sf, role, rec.get("before") or {})
                    sf.save(backup=False)
                    what = (f"interrupted {rec.get('action')} of {role} in {target.label} undone: "
                            f"settings restored to {(rec.get('before') or {}).get('model') or (rec.get('before') or {}).get('role_agent') or 'no agent'}")
                    log.warning("%s", what)
                    done.append(what)
                Journal.end(path)
        except GtExtError as e:  # e.g. the rig is gone: keep the record, say why
            log.warning("%s: cannot recover the interrupted %s yet: %s", path, rec.get("action"), e)
    return done
