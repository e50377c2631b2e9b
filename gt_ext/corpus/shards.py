"""The corpus export's shards: the one writer and the one reader of the format in docs/CONTRACTS.md.

    DIR/manifest.json
    DIR/sft/<role>/<task>/{train,val}.jsonl
    DIR/dpo/<role>/<task>/{train,val}.jsonl

Writing (`gt corpus export`): `write_shards(store, out)`. Only active examples go out; SFT takes
those labelled good or neutral (never one with a convention violation or a failed outcome); DPO
pairs a success with a failure of the same task (same opening prompt), plus the task-level
preference pairs picked from A/B runs (`gt-ext prefs pick`). The train/val split is a
pure function of the prompt, so it is deterministic and the same task never lands on both sides.
Files are written to a temp folder and renamed into place.

Scope (`Scope`): an export is rig-local. For rig R it takes R's examples, the town-level ones (no
rig) and those of rigs that opted in to sharing in their own settings
(`<town>/<rig>/settings/gt-ext.json` `{"corpus": {"share": true}}`); without a rig, the town-level
ones and the sharing rigs'. `all_rigs` takes everything (an explicit choice).

Stale sessions (`StalePolicy`): a session recorded while a convention artifact in its scope
(CLAUDE.md, AGENTS.md, a formula, a spec or plan of the town or its rig, for its role or for all
roles) had a version that is no longer the current one followed a convention that has since been
replaced (a reviewed reversion makes the old version current again, and its sessions fresh). `drop` leaves such sessions out, `weight=W` keeps a
deterministic share W of them (by example id: they count W times as much in expectation), `keep`
exports them as they are. Artifact examples, curated examples and `gt prime` output (which
changes with every patrol cycle) are never stale.

Reading (training, the swarm, the contamination guard, RAG's session index, job beads):
`read_manifest`, `corpus_hash`, `partition_files`, `shard_files`, `iter_records`. One policy for a
bad line everywhere: a one-line `GtExtError` naming `file:line`. Records end at "\n" only (a
U+2028 inside a string never cuts one).

("export" alone means the model artifacts of `gt_ext.export`; corpus shards are "shards".)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gt_ext.atomic import replace_dir
from gt_ext.corpus.format import canonical_json, dpo_id
from gt_ext.corpus.ingest import NODE0_SOURCE
from gt_ext.corpus.scrub import Scrubber
from gt_ext.corpus.store import Store, StoredExample
from gt_ext.digest import sha256_file
from gt_ext.errors import GtExtError
from gt_ext.jsonl import iter_jsonl
from gt_ext.private import DIR_MODE, FILE_MODE
from gt_ext.roles import TASKS

log = logging.getLogger(__name__)

SESSION_SOURCES = ("claude-jsonl", "node0-jsonl", "pi-jsonl", "pane", "sample")  # recorded sessions (can go stale)
CONVENTION_SOURCE = "artifact"  # CLAUDE.md, AGENTS.md, formulas, specs/plans (not gt-prime)


def shared_rigs(store: Store, rigs: set[str]) -> set[str]:
    """Those of `rigs` that opted in to sharing their examples with the town's other rigs, each in
    its own settings (`<town>/<rig>/settings/gt-ext.json` `{"corpus": {"share": true}}`)."""
    from gt_ext.gastown.ext_settings import rig_shares_corpus

    town = store.root.parent
    return {r for r in rigs if rig_shares_corpus(town, r)}


@dataclass(frozen=True)
class StalePolicy:
    """What export does with sessions recorded under a superseded convention: drop | weight=W | keep."""

    mode: str = "drop"
    weight: float = 0.0

    @classmethod
    def parse(cls, spec: str, option: str = "--stale-sessions") -> StalePolicy:
        """`drop`, `keep` or `weight=W` with 0 < W < 1; anything else is a one-line error naming `option`."""
        spec = (spec or "").strip()
        if spec in ("drop", "keep"):
            return cls(spec, 0.0 if spec == "drop" else 1.0)
        if spec.startswith("weight="):
            try:
                w = float(spec.split("=", 1)[1])
            except ValueError:
                w = -1.0
            if 0.0 < w < 1.0:
                return cls("weight", w)
        raise GtExtError(f"{option} must be drop, keep or weight=W with 0 < W < 1, got {spec!r}")

    def keeps(self, example_id: str) -> bool:
        """Whether a stale example goes out (weight: a deterministic share, by id)."""
        if self.mode == "keep":
            return True
        if self.mode == "drop":
            return False
        return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < self.weight

    def __str__(self) -> str:
        return f"weight={self.weight:g}" if self.mode == "weight" else self.mode


def _epoch(iso: str | None, fallback: float) -> float:
    if iso:
        try:
            return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return fallback


def convention_timelines(store: Store) -> list[dict[str, Any]]:
    """Convention artifacts that have had more than one version: {key, rig, role, current, events}
    where `events` are (epoch seconds, version hash) moments a version took effect, oldest first: a
    version's own time (its file's mtime), and the moment a reviewed reversion made it current again."""
    rows = store.db.execute("SELECT artifact_key, source_hash, status, role, rig, time, created FROM examples "
                            "WHERE source = ? AND artifact_key IS NOT NULL", (CONVENTION_SOURCE,)).fetchall()
    by_key: dict[str, list] = defaultdict(list)
    for r in rows:
        by_key[r["artifact_key"]].append(r)
    out = []
    for key, versions in sorted(by_key.items()):
        active = [v for v in versions if v["status"] == "active"]
        # Versions that were in effect at some time (a reversion under review was, before).
        known = [v for v in versions if v["status"] in ("active", "superseded", "review")]
        if not active or len({v["source_hash"] for v in known}) < 2:
            continue
        events = {(_epoch(v["time"], v["created"]), v["source_hash"]) for v in known}
        events |= {(float(v["created"]), v["source_hash"]) for v in active}  # a restored version took effect again then
        out.append({"key": key, "rig": active[0]["rig"], "role": active[0]["role"],
                    "current": active[0]["source_hash"], "events": sorted(events)})
    return out


def stale_reason(e: StoredExample, timelines: list[dict[str, Any]]) -> str | None:
    """The convention artifact whose version in effect when the session was recorded is not the
    current one, or None (not a session, out of that artifact's scope, or up to date)."""
    if e.source not in SESSION_SOURCES:
        return None
    when = _epoch(e.time, e.created)
    for c in timelines:
        if c["rig"] not in (None, e.rig) or c["role"] not in (None, e.role):
            continue
        in_effect = c["events"][0][1]
        for start, version in c["events"]:
            if start <= when:
                in_effect = version
        if in_effect != c["current"]:
            return c["key"]
    return None


@dataclass(frozen=True)
class Scope:
    """Whose examples an export takes (see the module doc)."""

    rig: str | None = None
    all_rigs: bool = False

    def allowed(self, store: Store, rigs: set[str]) -> set[str | None] | None:
        """The rig tags that may go out (None in the set = town-level), or None for all."""
        if self.all_rigs:
            return None
        return {None, *([self.rig] if self.rig else []), *shared_rigs(store, rigs - {self.rig})}

    def describe(self) -> str:
        return "all rigs" if self.all_rigs else (f"rig {self.rig}" if self.rig else "town-level")


def _prompt_key(messages: list[dict[str, str]]) -> str:
    """The task an example answers: everything up to and including its first user turn."""
    out = []
    for m in messages:
        out.append(m)
        if m["role"] == "user":
            break
    return hashlib.sha256(canonical_json(out).encode()).hexdigest()


def _is_val(key: str, val_pct: int) -> bool:
    return int(key[:8], 16) % 100 < val_pct


def _task(ex: StoredExample) -> str:
    return ex.task if ex.task in TASKS else "general"


def split_at_divergence(chosen: list[dict[str, str]], rejected: list[dict[str, str]]
                        ) -> tuple[list[dict[str, str]], str, str] | None:
    """(shared prefix, chosen turn, rejected turn): the first assistant turns where two chats part
    after a common opening that holds a user turn; None when they never part that way."""
    a, b = chosen, rejected
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if i == 0 or i >= len(a) or i >= len(b) or a[i]["role"] != "assistant" or b[i]["role"] != "assistant":
        return None
    if not any(m["role"] == "user" for m in a[:i]):
        return None
    return a[:i], a[i]["content"], b[i]["content"]


def _dpo_pair(good: StoredExample, bad: StoredExample) -> dict[str, Any] | None:
    """Prompt = shared prefix; chosen/rejected = the first assistant turns where they part."""
    split = split_at_divergence(good.messages or [], bad.messages or [])
    if split is None:
        return None
    prompt, chosen, rejected = split
    prov = good.provenance() | {"rejected_session": bad.session or "", "rejected_bead": bad.bead or "",
                                "rejected_source_hash": bad.source_hash}
    return {"id": dpo_id(prompt, chosen, rejected), "role": good.role, "task": _task(good),
            "prompt": prompt, "chosen": chosen, "rejected": rejected, "provenance": prov}


# A model's own outputs: sessions the node0 agent served.
SELF_SOURCE = NODE0_SOURCE
# Default: leave them out. Training a model on its own unreviewed output narrows what it does with
# every round (model collapse: Shumailov et al., Nature 2024; mixing in fresh human/agent data, as a
# corpus that keeps growing does, slows it but does not make the outputs reviewed). A reviewer who
# wants them back says so (`--self-outputs keep`, or `weight=W` for a share of them).
SELF_OUTPUTS_DEFAULT = "drop"


def parse_self_outputs(spec: str) -> StalePolicy:
    """`--self-outputs drop | keep | weight=W`: the same kind of policy as for stale sessions."""
    return StalePolicy.parse(spec, option="--self-outputs")


def write_shards(store: Store, out: str | os.PathLike, rig: str | None = None, val_pct: int = 10,
                 overwrite: bool = False, all_rigs: bool = False, role: str | None = None,
                 stale: StalePolicy | str = "drop", self_outputs: StalePolicy | str = SELF_OUTPUTS_DEFAULT) -> dict[str, Any]:
    """Write the shards and manifest to `out`; return the manifest.

    Scope (module doc): `rig` R's examples, town-level ones and those of rigs sharing theirs;
    without `rig`, town-level ones and the sharing rigs'; `all_rigs` everything. `role`: that
    role only (an error naming where its examples are when the scope holds none). `stale`: what to
    do with sessions recorded under a superseded convention (StalePolicy). `self_outputs`: what to
    do with the served models' own sessions (`SELF_SOURCE`): `drop` (default, see
    `SELF_OUTPUTS_DEFAULT`), `keep`, or `weight=W` (a deterministic share W of them, by example id).
    It applies to SFT records and to the chosen side of DPO pairs; a served model's failure stays
    usable as a DPO rejected answer (learning what not to do is not learning from its own output).
    """
    if not 0 <= val_pct < 100:
        raise GtExtError(f"--val-pct must be in 0..99, got {val_pct}")
    if rig and all_rigs:
        raise GtExtError("--rig and --all-rigs exclude each other")
    policy = stale if isinstance(stale, StalePolicy) else StalePolicy.parse(stale)
    own = self_outputs if isinstance(self_outputs, StalePolicy) else parse_self_outputs(self_outputs)
    scope = Scope(rig=rig or None, all_rigs=all_rigs)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise GtExtError(f"{out} exists and is not a corpus export: refusing to replace it")
        if not overwrite:
            raise GtExtError(f"{out} already holds an export: pass --overwrite to replace it")
    verifier = Scrubber(use_detect_secrets=False)  # last line of defence: no certain secret may leave

    examples = [e for e in store.query(status="active", role=role) if e.messages and e.role]
    # A batch still open (being stored, or left by a killed processor) has not passed the batch
    # anomaly check yet: none of it leaves before it is judged (the next `corpus process` does it).
    open_batches = {r[0] for r in store.db.execute("SELECT batch FROM open_batches")}
    if unjudged := [e for e in examples if e.batch in open_batches]:
        log.warning("%d example(s) of %d unfinished processing batch(es) left out until judged: run `gt corpus "
                    "process`", len(unjudged), len({e.batch for e in unjudged}))
        examples = [e for e in examples if e.batch not in open_batches]
    allowed = scope.allowed(store, {e.rig for e in examples if e.rig})
    in_scope = [e for e in examples if allowed is None or e.rig in allowed]
    if role and examples and not in_scope:
        where = ", ".join(f"{r} {n}" for r, n in sorted(Counter(e.rig or "town" for e in examples).items()))
        raise GtExtError(f"no {role} examples in scope {scope.describe()} (its examples are in: {where}); "
                         "export for the job's rig with --rig R, let a rig share with "
                         '{"corpus": {"share": true}} in its settings/gt-ext.json, or pass --all-rigs')
    timelines = convention_timelines(store)
    stale_by: Counter[str] = Counter()
    kept_stale = 0
    fresh: list[StoredExample] = []
    for e in in_scope:
        key = stale_reason(e, timelines)
        if key is not None:
            stale_by[key] += 1
            if not policy.keeps(e.id):
                continue
            kept_stale += 1
        fresh.append(e)
    if stale_by:
        log.info("%d session example(s) predate a convention change (%s): %s, %d exported", sum(stale_by.values()),
                 ", ".join(sorted(stale_by)), policy, kept_stale)
    excluded = 0
    clean: list[StoredExample] = []
    for e in fresh:
        if any(verifier.scan(m["content"]) for m in e.messages or []):
            excluded += 1
            log.error("example %s still holds a detectable secret after scrubbing: not exported", e.id[:12])
            continue
        clean.append(e)

    def usable(e: StoredExample) -> bool:  # as an SFT record or a DPO chosen answer
        return e.source != SELF_SOURCE or own.keeps(e.id)

    n_self = sum(e.source == SELF_SOURCE for e in clean)
    n_self_kept = sum(e.source == SELF_SOURCE and usable(e) for e in clean)
    sft: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for e in clean:
        if e.label in ("good", "neutral") and usable(e):
            split = "val" if _is_val(_prompt_key(e.messages), val_pct) else "train"
            sft[(e.role, _task(e), split)].append(
                {"id": e.id, "role": e.role, "task": _task(e), "messages": e.messages, "provenance": e.provenance()})

    by_prompt: dict[tuple[str, str], dict[str, list[StoredExample]]] = defaultdict(lambda: {"good": [], "bad": []})
    for e in clean:
        key = (e.role, _prompt_key(e.messages))
        if e.label == "good" and usable(e):
            by_prompt[key]["good"].append(e)
        elif e.label == "bad":
            by_prompt[key]["bad"].append(e)
    dpo: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for (_role, pkey), grp in sorted(by_prompt.items()):
        goods = sorted(grp["good"], key=lambda x: x.id)
        bads = sorted(grp["bad"], key=lambda x: x.id)
        for g, b in zip(goods, bads * (len(goods) // max(1, len(bads)) + 1), strict=False):
            if (pair := _dpo_pair(g, b)) is not None:
                split = "val" if _is_val(pkey, val_pct) else "train"
                dpo[(pair["role"], pair["task"], split)].append(pair)

    # Task-level preference pairs (gt_ext.prefs): picked by a person or a rule from two models'
    # outcomes of one bead; stored scrubbed, exported as they are.
    # Same scope as the examples: a rig's pairs go out with that rig (or when it shares).
    n_prefs = 0
    prefs = store.preferences(status="active", role=role)
    prefs_allowed = scope.allowed(store, {p["rig"] for p in prefs if p.get("rig")})
    for p in prefs:
        if prefs_allowed is not None and (p.get("rig") or None) not in prefs_allowed:
            continue
        task = p["task"] if p["task"] in TASKS else "general"
        split = "val" if _is_val(_prompt_key(p["prompt"]), val_pct) else "train"
        dpo[(p["role"], task, split)].append({"id": p["id"], "role": p["role"], "task": task, "prompt": p["prompt"],
                                              "chosen": p["chosen"], "rejected": p["rejected"],
                                              "provenance": p["provenance"]})
        n_prefs += 1

    out.parent.mkdir(parents=True, exist_ok=True)  # the temp folder must be a sibling for the rename
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files: dict[str, str] = {}
        counts: dict[str, dict] = {"sft": {}, "dpo": {}}
        for kind, groups in (("sft", sft), ("dpo", dpo)):
            for (role, task, split), recs in sorted(groups.items()):
                rel = f"{kind}/{role}/{task}/{split}.jsonl"
                data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                               for r in sorted(recs, key=lambda r: r["id"])).encode()
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
                files[rel] = hashlib.sha256(data).hexdigest()
                counts[kind].setdefault(role, {}).setdefault(task, {"train": 0, "val": 0})[split] = len(recs)
        manifest = {
            "corpus_hash": files_hash(files),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "counts": counts,
            "files": dict(sorted(files.items())),
            "rig": scope.rig,
            "scope": scope.describe(),
            "rigs": sorted({e.rig for e in clean if e.rig}),
            "role": role,
            "val_pct": val_pct,
            "excluded_unsafe": excluded,
            "preference_pairs": n_prefs,
            "stale_sessions": {"policy": str(policy), "stale": sum(stale_by.values()), "exported": kept_stale,
                               "conventions": dict(sorted(stale_by.items()))},
            "self_outputs": {"policy": str(own), "examples": n_self, "kept": n_self_kept},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for p in tmp.rglob("*"):  # training text: owner only (gt_ext.private)
            os.chmod(p, DIR_MODE if p.is_dir() else FILE_MODE)
        os.chmod(tmp, DIR_MODE)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def verify_shards(out: str | os.PathLike) -> dict[str, Any]:
    """Re-hash an export and compare with its manifest; raise on any mismatch."""
    out = Path(out)
    manifest = read_manifest(out)
    for rel, h in manifest["files"].items():
        p = out / rel
        if not p.is_file() or sha256_file(p) != h:
            raise GtExtError(f"{out}/{rel}: missing or hash differs from the manifest")
    if files_hash(manifest["files"]) != manifest["corpus_hash"]:
        raise GtExtError(f"{out}: corpus_hash does not match the file hashes")
    return manifest


# --------------------------------------------------------------------------------------- reading

MANIFEST = "manifest.json"
KINDS = ("sft", "dpo")
SPLITS = ("train", "val")


def files_hash(files: dict[str, str]) -> str:
    """`corpus_hash`: sha256 over the sorted file hashes, one a line."""
    return hashlib.sha256("\n".join(sorted(files.values())).encode()).hexdigest()


def read_manifest(corpus: str | os.PathLike) -> dict[str, Any]:
    """`<corpus>/manifest.json`; a one-line `GtExtError` when it is missing or not a JSON object."""
    p = Path(corpus) / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GtExtError(f"{Path(corpus)}: no {MANIFEST} (make one with `gt corpus export --out DIR`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GtExtError(f"{p}: unreadable ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise GtExtError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(m, dict):
        raise GtExtError(f"{p}: expected a JSON object")
    return m


def corpus_hash(corpus: str | os.PathLike) -> str | None:
    """The export's `corpus_hash`; None for a folder without a manifest (shards made by hand).
    A manifest that is there but broken is an error, never a silent None."""
    if not (Path(corpus) / MANIFEST).is_file():
        return None
    return read_manifest(corpus).get("corpus_hash")


def partition_files(corpus: str | os.PathLike, kind: str, role: str, task: str | None, split: str) -> list[Path]:
    """The shard files of one partition, `corpus/<kind>/<role>/<task>/<split>.jsonl` (all tasks if None)."""
    corpus = Path(corpus)
    if kind not in KINDS or split not in SPLITS:
        raise GtExtError(f"bad partition kind={kind!r} split={split!r}")
    if not corpus.is_dir():
        raise GtExtError(f"corpus folder {corpus} not found")
    role_dir = corpus / kind / role
    if task is not None:
        return [p for p in [role_dir / task / f"{split}.jsonl"] if p.is_file()]
    return sorted(p for p in role_dir.glob(f"*/{split}.jsonl") if p.is_file())


def shard_files(corpus: str | os.PathLike, kinds: tuple[str, ...] = KINDS) -> list[Path]:
    """Every shard of an export (`<kind>/<role>/<task>/<split>.jsonl`), sorted."""
    corpus = Path(corpus)
    return sorted(p for k in kinds for p in corpus.glob(f"{k}/*/*/*.jsonl") if p.is_file())


def is_export(folder: str | os.PathLike) -> bool:
    """True for a folder laid out as an export (a manifest, or sft/ or dpo/ shards)."""
    f = Path(folder)
    return f.is_dir() and ((f / MANIFEST).is_file() or any((f / k).is_dir() for k in KINDS))


def iter_records(paths: Sequence[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """Stream the JSON objects of JSONL shards; a bad line raises a `GtExtError` naming file:line.

    Each record gets `_where` = "file:line" (for the caller's own error messages)."""
    for path in paths:
        for lineno, rec in iter_jsonl(path, "shard"):
            if not isinstance(rec, dict):
                raise GtExtError(f"{path}:{lineno}: expected a JSON object")
            rec["_where"] = f"{path}:{lineno}"
            yield rec
