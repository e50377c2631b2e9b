"""`Registry`: the model registry's one entry point (metadata + files + deployment).

    reg = Registry.open()                    # town found from cwd / GT_TOWN_ROOT, else ~/gt/.models
    rec = reg.register("runs/witness-1")     # -> ModelRecord, files in <root>/<name>/v<N>/
    reg.record_eval("witness:1", result)     # EvalResult.to_dict()
    reg.deploy("witness:1", role="witness")  # town settings: agents["node0-witness"], role_agents
    reg.rollback("witness")

Where things are: inside a town, files under `<town>/.models/` and metadata in the town's HQ Dolt
database (when its `dolt sql-server` answers); outside a town, `$GT_EXT_MODELS` or `~/gt/.models/`
and an SQLite file `registry.sqlite` in it. `GT_EXT_REGISTRY_BACKEND=sqlite|dolt` forces a backend.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.gastown.town import Town, find_town
from gt_ext.paths import home_dir
from gt_ext.registry import deploy, model_files, prune
from gt_ext.registry import gate as gating
from gt_ext.registry.db import Deployment, DoltStore, MetaStore, ModelRecord, SqliteStore
from gt_ext.registry.journal import Journal
from gt_ext.registry.locks import LockBusy, file_lock
from gt_ext.roles import ROLES, check_role, check_task

log = logging.getLogger(__name__)

SQLITE_FILE = "registry.sqlite"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_REF_RE = re.compile(r"^(?P<name>[^:]+?)(?::v?(?P<ver>\d+))?$")
_RUN_STATUS_OK = {"done", "degraded", None}


def models_root(town: Town | None) -> Path:
    """`<town>/.models`, else `$GT_EXT_MODELS`, else `~/gt/.models` (`$GT_EXT_HOME/.models`)."""
    if town is not None:
        return town.root / ".models"
    env = os.environ.get("GT_EXT_MODELS")
    return Path(env) if env else home_dir() / ".models"


def open_store(town: Town | None, root: Path, backend: str | None = None) -> MetaStore:
    """The metadata backend: Dolt (town HQ) inside a town, SQLite otherwise or when forced."""
    backend = backend or os.environ.get("GT_EXT_REGISTRY_BACKEND") or ("dolt" if town else "sqlite")
    if backend == "sqlite":
        return SqliteStore(root / SQLITE_FILE)
    if backend == "dolt":
        if town is None:
            raise GtExtError("registry backend dolt needs a Gas Town (set GT_TOWN_ROOT) or use sqlite")
        from gt_ext.gastown.dolt import DoltClient

        client = DoltClient.for_town(town.root)
        try:
            client.connect()
        except GtExtError as e:
            raise GtExtError(f"{e}; start the town's server (`gt dolt start`) or set "
                             "GT_EXT_REGISTRY_BACKEND=sqlite") from None
        return DoltStore(client, database=os.environ.get("GT_EXT_REGISTRY_DB", "hq"))
    raise GtExtError(f"GT_EXT_REGISTRY_BACKEND={backend!r}: expected sqlite or dolt")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME`, `NAME:VER` or `NAME:vVER` -> (name, version or None)."""
    m = _REF_RE.match(ref.strip()) if ref else None
    if not m:
        raise GtExtError(f"bad model reference {ref!r}: expected NAME or NAME:VER")
    return m.group("name"), int(m.group("ver")) if m.group("ver") else None


def _fingerprint_digest(fp: Any) -> str | None:
    """The digest of run.json's `convention_fingerprint` summary (`gt_ext.loop.fingerprint`)."""
    if isinstance(fp, dict):
        return str(fp["digest"]) if fp.get("digest") else None
    return str(fp) if fp else None


@dataclass
class DeployResult:
    """What a deploy or rollback did."""

    entry: Deployment
    settings_path: Path
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**self.entry.to_dict(), "settings": str(self.settings_path), "warnings": self.warnings}


class Registry:
    """Model versions (files + metadata) and their deployment to Gas Town roles."""

    def __init__(self, store: MetaStore, root: Path, town: Town | None = None):
        self.store = store
        self.files = model_files.ArtifactStore(root)
        self.root = root
        self.town = town
        self.journal = Journal(root)

    @classmethod
    def open(cls, town: Town | str | os.PathLike | None = None, root: str | os.PathLike | None = None,
             backend: str | None = None) -> Registry:
        """Open the registry of `town` (a Town or its path; default: found from cwd/env), or the
        per-user registry outside a town. `root` moves the files, `backend` forces sqlite|dolt."""
        if town is not None and not isinstance(town, Town):
            found = find_town(town)
            if found is None:
                raise GtExtError(f"{town}: not a Gas Town (no mayor/town.json)")
            town = found
        elif town is None:
            town = find_town()
        root_path = Path(root) if root else models_root(town)
        root_path.mkdir(parents=True, exist_ok=True)
        reg = cls(open_store(town, root_path, backend), root_path, town)
        try:
            reg.recover()
        except BaseException:
            reg.close()
            raise
        return reg

    def recover(self) -> list[str]:
        """Bring files, metadata and settings back into agreement after a command was killed
        (`gt_ext.registry.journal`): interrupted registers are undone, interrupted prunes finished,
        interrupted deploys/rollbacks finished or undone, and temp and trash folders removed.
        Runs on every open; the file part is skipped while another command holds the registry."""
        done: list[str] = []
        if self.town is not None:
            done += deploy.recover_deploys(self.store, self.town, self.journal)
        try:
            with file_lock(self._root_lock, blocking=False):
                done += self._recover_files()
        except LockBusy:
            log.debug("%s: busy, file recovery left to a later command", self.root)
        except PermissionError as e:  # a reader without write access: nothing it could repair anyway
            log.debug("%s: no recovery (%s)", self.root, e)
        return done

    def _recover_files(self) -> list[str]:
        """Under the exclusive root lock: journals of register and prune, then leftover folders."""
        done = []
        for path, rec in self.journal.pending("register"):
            name, version = str(rec["name"]), int(rec["version"])
            if self.store.get_model(name, version) is None:
                self.files.remove(self.files.version_dir(name, version))
                done.append(f"interrupted register of {name}:{version} undone")
            Journal.end(path)
        for path, rec in self.journal.pending("prune"):
            name, version = str(rec["name"]), int(rec["version"])
            if self.store.get_model(name, version) is None:
                self.files.remove(self.files.version_dir(name, version))
                done.append(f"interrupted prune of {name}:{version} finished")
            Journal.end(path)
        for leftover in self.files.leftovers():
            model_files.ArtifactStore._rmtree(leftover)
            done.append(f"removed leftover {leftover}")
        for what in done:
            log.warning("registry recovery: %s", what)
        return done

    def close(self) -> None:
        """Release the metadata connection."""
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _root_lock(self) -> Path:
        return self.root / ".registry.lock"

    # -- reading ---------------------------------------------------------------------------------
    def get(self, ref: str) -> ModelRecord:
        """The record for `NAME[:VER]` (newest version without VER). `witness-v2` also finds
        `witness:2` when no model is named `witness-v2`."""
        name, ver = parse_ref(ref)
        rec = self.store.get_model(name, ver)
        if rec is None and ver is None:
            m = re.match(r"^(.+)-v(\d+)$", name)
            if m:
                rec = self.store.get_model(m.group(1), int(m.group(2)))
        if rec is None:
            raise GtExtError(f"no model {ref!r} in the registry ({self.store.backend}, {self.root})")
        return rec

    def list(self) -> list[ModelRecord]:
        """Every registered version (role models and task adapters), by name then version."""
        return self.store.list_models()

    def adapters(self) -> list[ModelRecord]:
        """Task adapters only."""
        return [r for r in self.list() if r.task]

    def live(self) -> dict[tuple[str, str], Deployment]:
        """{(role, rig): live deploy entry}; rig "" is the town."""
        return deploy.current_deployments(self.store)

    def deployed_to(self, rec: ModelRecord, live: dict[tuple[str, str], Deployment] | None = None) -> list[str]:
        """Where `rec` serves now: `role@town` / `role@<rig>` (as model or as task adapter)."""
        live = self.live() if live is None else live
        out = []
        for (role, rig), d in sorted(live.items()):
            if d.after.get("model") == rec.ref or rec.ref in (d.after.get("adapters") or []):
                out.append(f"{role}@{rig or 'town'}")
        return out

    def history(self, role: str | None = None, rig: str | None = None) -> list[Deployment]:
        """The append-only deployment history (oldest first)."""
        return self.store.deployments(role=role, rig=rig)

    # -- writing ---------------------------------------------------------------------------------
    def current(self, role: str) -> ModelRecord | None:
        """The role's current model: the one deployed to the role in town settings (else in any
        rig), else the newest version named after the role, else the newest role model of it."""
        live = self.live()
        for (r, _rig), d in sorted(live.items(), key=lambda kv: kv[0][1] != ""):
            if r == role and d.after.get("model"):
                try:
                    return self.get(d.after["model"])
                except GtExtError:
                    continue
        mine = [rec for rec in self.list() if rec.role == role and not rec.task]
        named = [rec for rec in mine if rec.name == role]
        pool = named or mine
        return max(pool, key=lambda rec: (rec.created, rec.version)) if pool else None

    def ref_for_path(self, path: str | os.PathLike | None) -> str | None:
        """`name:ver` of the registered version whose folder holds `path` (None if none does)."""
        if not path or not Path(path).is_absolute():
            return None
        try:
            rel = Path(path).resolve().relative_to(self.root.resolve())
        except (ValueError, OSError):
            return None
        m = re.match(r"^v(\d+)$", rel.parts[1]) if len(rel.parts) > 1 else None
        return f"{rel.parts[0]}:{int(m.group(1))}" if m else None

    def lineage(self, rec: ModelRecord, limit: int = 20) -> list[str]:
        """Refs from the oldest known ancestor to `rec` (parents that are not registry refs end it)."""
        chain = [rec.ref]
        cur = rec
        for _ in range(limit):
            if not cur.parent or ":" not in cur.parent or "/" in cur.parent:
                break
            try:
                cur = self.get(cur.parent)
            except GtExtError:
                chain.insert(0, f"{cur.parent} (gone)")
                break
            chain.insert(0, cur.ref)
        return chain

    def register(self, src: str | os.PathLike, name: str | None = None,
                 progress: Callable[[int, int], None] | None = None, parent: str | None = None) -> ModelRecord:
        """Copy a run or export folder into the next version of `name` and record it.

        Default name: the run's role, or `<role>-<task>` for a task adapter. `progress(done,
        total)` gets the bytes copied so far. `parent`: the registered model it was trained on top
        of; by default found from the run (base weights or a role adapter inside this registry).
        """
        src = Path(src)
        kind = model_files.source_kind(src)
        run = model_files.read_run_json(src)
        man = model_files.read_manifest(src) if kind == "export" else {}
        role = run.get("role") or man.get("role")
        if not role:
            raise GtExtError(f"{src / model_files.RUN_JSON}: no 'role'")
        check_role(str(role))
        base = run.get("base_model") or man.get("base_model")
        if not base:
            raise GtExtError(f"{src / model_files.RUN_JSON}: no 'base_model'")
        if run.get("status") not in _RUN_STATUS_OK:
            raise GtExtError(f"{src / model_files.RUN_JSON}: run status is {run.get('status')!r}; only finished runs can be registered")
        task = run.get("task")
        if task:
            check_task(task)
        name = name or (f"{role}-{task}" if task else str(role))
        if not _NAME_RE.match(name):
            raise GtExtError(f"bad model name {name!r}: lowercase letters, digits, '.', '_', '-' (no ':')")
        lora = run.get("lora") or {}
        # Trained on a registered version's merged weights (DPO on top of the role model): the
        # record is that version's stack plus this adapter, so its base is the version's base and
        # the version is its parent (gt_ext.models.refs stacks parent adapters under this one).
        on_weights_of = self.ref_for_path(base)
        if on_weights_of is not None:
            base = self.get(on_weights_of).base_model
        if parent:
            parent = self.get(parent).ref  # an unknown parent is a one-line error, nothing copied
            if on_weights_of is not None and parent != on_weights_of:
                raise GtExtError(f"--parent {parent}: {src} was trained on the weights of {on_weights_of}")
        else:
            parent = on_weights_of or self.ref_for_path(run.get("parent")) or run.get("parent")
        with file_lock(self._root_lock):
            version = max([self.store.max_version(name), *self.files.versions_on_disk(name)]) + 1
            # A kill after the folder is in place but before its record is written is undone by
            # the next command (`recover`); one during the copy leaves only a temp folder it removes.
            record = self.journal.begin("register", {"name": name, "version": version})
            path = self.files.install(src, name, version, progress=progress)
            rec = ModelRecord(
                name=name, version=version, role=str(role), task=task, base_model=str(base), path=path,
                parent=parent, corpus_hash=run.get("corpus_hash"),
                examples=int(run.get("examples") or 0), dpo_pairs=int(run.get("dpo_pairs") or 0),
                hyperparams={**(run.get("config") or {}), **({"lora": lora} if lora else {})}, lora_rank=lora.get("r"),
                compatible=[str(base)] if task else [],
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                convention_fingerprint=_fingerprint_digest(run.get("convention_fingerprint")
                                                           or man.get("convention_fingerprint")),
            )
            try:
                self.store.add_model(rec, f"register {rec.ref} ({role}, base {base})")
            except BaseException:
                self.files.remove(path)
                Journal.end(record)
                raise
            Journal.end(record)
        # Eval results found in the folder were not made through the registry: each counts only when
        # this user's `gt-ext eval run` signed it and its model file hashes are this version's own.
        from gt_ext.evals import provenance

        manifest_files = model_files.read_manifest(path)["files"]
        for ev in sorted(p for p in src.glob("eval-*.json") if p.is_file()):
            try:
                result = json.loads(ev.read_text())
                if not isinstance(result, dict):
                    raise GtExtError("not an eval result object")
                self.record_eval(rec.ref, result, source=f"file {ev.name}",
                                 untrusted=provenance.check(result) or gating.verify_model_files(result, manifest_files))
            except (GtExtError, json.JSONDecodeError) as e:
                log.warning("%s: not recorded (%s)", ev, e)
        return self.get(rec.ref)

    def record_eval(self, ref: str, result: dict[str, Any], write_file: bool = True, source: str = "run",
                    untrusted: str | None = None) -> ModelRecord:
        """Record an EvalResult dict for a version (gt_ext.registry.gate): append it to the version's
        `eval_runs`; when it gates (a full, trusted run of the role's gating suite) it also sets the
        version's gate, composite and categories. Writes it into the version folder (a partial run
        as `eval-<suite>-partial.json`). `untrusted` = why the result cannot be trusted."""
        rec = self.get(ref)
        try:
            cats = {str(k): dict(v) for k, v in (result.get("categories") or {}).items()}
            comp = result.get("composite")
            comp = None if comp is None else float(comp)
            deployable = (result.get("gate") or {}).get("deployable")
        except (AttributeError, TypeError, ValueError) as e:
            raise GtExtError(f"eval result for {rec.ref}: malformed ({e})") from None
        from gt_ext.evals.runner import result_filename

        fname = result_filename(result)
        town_root = self.town.root if self.town is not None else None
        entry = gating.eval_entry(result, rec, town_root, source, untrusted, fname)
        gate = ("pass" if deployable else "fail") if entry["gating"] else None
        if not entry["gating"]:
            log.warning("eval of %s recorded, not used by the deploy gate: %s", rec.ref, entry["why_not_gating"])
        self.store.update_eval(rec.name, rec.version, cats, comp, gate,
                               f"eval {rec.ref}: {result.get('suite')} composite {comp}, "
                               + (f"gate {gate}" if gate else "not gating"),
                               eval_runs=[*rec.eval_runs, entry])
        if write_file:
            atomic_write_json(rec.path / fname, result)
        return self.get(rec.ref)

    def _target(self, rig: str | None, role: str) -> deploy.Target:
        if self.town is None:
            raise GtExtError("deploy and rollback need a Gas Town: run inside one or set GT_TOWN_ROOT")
        if rig and role in deploy.TOWN_ROLES:
            raise GtExtError(f"{role} is a town-level role: deploy or roll it back without --rig")
        if rig:
            self.town.rig(rig)  # GtExtError naming the known rigs
        return deploy.Target(self.town, rig or deploy.TOWN_SCOPE)

    def deploy(self, ref: str, role: str | None = None, rig: str | None = None, force_reason: str | None = None,
               adapters: list[str] | None = None, reason: str = "", rag: bool = True) -> DeployResult:
        """Serve `ref` for `role` (default: the model's role) in town or `rig` settings.

        `rag` (default): the agent prepends the town's RAG context to every prompt, within the
        role's budget (`gt_ext.rag.retrieve.role_budget`); False deploys without it.

        Refused: mayor (always), task adapters as models, a model without a passing full eval of
        its role's gating suite (`gt_ext.registry.gate`), a model trained for another role, or a
        role whose earlier rollout stages have no model deployed yet — the last three unless
        `force_reason` is given (it is logged and recorded in the deployment history).
        """
        rec = self.get(ref)
        role = deploy.check_deployable_role(role or rec.role)
        if rec.task:
            raise GtExtError(f"{rec.ref} is a task adapter ({rec.task}); deploy a role model and pass it with --adapters")
        target = self._target(rig, role)
        if force_reason is not None and not force_reason.strip():
            raise GtExtError("--force needs --reason TEXT (it is recorded in the registry)")
        warnings: list[str] = []
        problems = gating.deploy_problems(rec, self.town.root if self.town is not None else None)
        if rec.role != role:
            problems.append(f"{rec.ref} was trained for role {rec.role}, not {role}")
        adapter_refs = []
        for a in adapters or []:
            arec = self.get(a)
            if not arec.task:
                raise GtExtError(f"--adapters {a}: {arec.ref} is a role model, not a task adapter")
            if rec.base_model not in (arec.compatible or [arec.base_model]):
                raise GtExtError(f"--adapters {a}: {arec.ref} fits {', '.join(arec.compatible)}, not {rec.base_model}")
            model_files.verify(arec.path)
            adapter_refs.append(arec.ref)
        with file_lock(self._root_lock, shared=True):  # prune cannot delete files under us
            model_files.verify(rec.path)  # corrupt manifest / checksum mismatch: refused, naming the file
            blockers = deploy.rollout_blockers(role, target.rig, self.live())
            if blockers:
                problems.append(f"rollout order: deploy {' then '.join(blockers)} before {role}")
            if problems and force_reason is None:
                raise GtExtError(f"refusing to deploy {rec.ref} to {role}: {'; '.join(problems)} "
                                 "(override with --force --reason TEXT)")
            if problems:
                log.warning("forced deploy of %s to %s (%s): %s", rec.ref, role, force_reason, "; ".join(problems))
                warnings += [f"forced: {p}" for p in problems]
            why = force_reason if problems else (reason or force_reason or "")
            budget = None
            if rag:
                from gt_ext.rag.retrieve import role_budget

                budget = role_budget(role)
            entry = deploy.write_deploy(self.store, target, role, rec.ref, adapter_refs, why, bool(problems),
                                        self.journal, budget)
        for w in warnings:
            log.warning("%s", w)
        return DeployResult(entry, target.settings().path, warnings)

    def rollback(self, role: str, rig: str | None = None, reason: str = "") -> DeployResult:
        """Restore the settings of `role` (town or `rig`) to what they were before its last deploy."""
        check_role(role)
        target = self._target(rig, role)
        with file_lock(self._root_lock, shared=True):
            entry = deploy.write_rollback(self.store, target, role, self.journal, reason)
        return DeployResult(entry, target.settings().path, [])

    def prune(self, keep: int = 3, dry_run: bool = False) -> prune.PrunePlan:
        """Delete old versions (files and records); see `gt_ext.registry.prune` for what stays."""
        if keep < 0:
            raise GtExtError(f"--keep {keep}: must be 0 or more")
        with file_lock(self._root_lock):  # exclusive: no deploy or register meanwhile
            launched = prune.launched_refs(self.town) if self.town is not None else set()
            p = prune.plan(self.list(), self.store.deployments(), keep, launched)
            if not dry_run:
                for rec in p.delete:
                    # Record first, then files; a kill in between is finished by `recover`.
                    record = self.journal.begin("prune", {"name": rec.name, "version": rec.version})
                    self.store.delete_model(rec.name, rec.version, f"prune {rec.ref}")
                    self.files.remove(rec.path)
                    Journal.end(record)
        return p


__all__ = ["ROLES", "DeployResult", "ModelRecord", "Registry", "models_root", "open_store", "parse_ref"]
