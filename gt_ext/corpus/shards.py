"""The corpus export's shards: the one writer and the one reader of the format in docs/CONTRACTS.md.

    DIR/manifest.json
    DIR/sft/<role>/<task>/{train,val}.jsonl
    DIR/dpo/<role>/<task>/{train,val}.jsonl

Writing (`gt corpus export`): `write_shards(store, out)`. Only active examples go out; SFT takes
those labelled good or neutral (never one with a convention violation or a failed outcome); DPO
pairs a success with a failure of the same task (same opening prompt). The train/val split is a
pure function of the prompt, so it is deterministic and the same task never lands on both sides.
Files are written to a temp folder and renamed into place.

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
from collections import defaultdict
from collections.abc import Iterator, Sequence
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
from gt_ext.roles import TASKS

log = logging.getLogger(__name__)

SETTINGS_FILE = "gt-ext.json"  # this project's own settings file (gt drops unknown keys in its own)


def shared_rigs(store: Store) -> set[str]:
    """Rigs that opted in to cross-rig sharing: ``{"corpus": {"share": ["rigA", ...]}}`` in
    ``<town>/settings/gt-ext.json`` (or ``$GT_EXT_HOME/gt-ext.json`` outside a town)."""
    for p in (store.root.parent / "settings" / SETTINGS_FILE, store.root.parent / SETTINGS_FILE):
        if p.is_file():
            try:
                cfg = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise GtExtError(f"{p}:{e.lineno}: invalid JSON") from None
            share = (cfg.get("corpus") or {}).get("share") or []
            if not isinstance(share, list):
                raise GtExtError(f"{p}: corpus.share must be a list of rig names")
            return {str(x) for x in share}
    return set()


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


def _dpo_pair(good: StoredExample, bad: StoredExample) -> dict[str, Any] | None:
    """Prompt = shared prefix; chosen/rejected = the first assistant turns where they part."""
    a, b = good.messages or [], bad.messages or []
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if i == 0 or i >= len(a) or i >= len(b) or a[i]["role"] != "assistant" or b[i]["role"] != "assistant":
        return None
    if not any(m["role"] == "user" for m in a[:i]):
        return None
    prompt = a[:i]
    prov = good.provenance() | {"rejected_session": bad.session or "", "rejected_bead": bad.bead or "",
                                "rejected_source_hash": bad.source_hash}
    return {"id": dpo_id(prompt, a[i]["content"], b[i]["content"]), "role": good.role, "task": _task(good),
            "prompt": prompt, "chosen": a[i]["content"], "rejected": b[i]["content"], "provenance": prov}


# A model's own outputs: sessions the node0 agent served.
SELF_SOURCE = NODE0_SOURCE
# Default: leave them out. Training a model on its own unreviewed output narrows what it does with
# every round (model collapse: Shumailov et al., Nature 2024; mixing in fresh human/agent data, as a
# corpus that keeps growing does, slows it but does not make the outputs reviewed). A reviewer who
# wants them back says so (`--self-outputs keep`, or `weight=W` for a share of them).
SELF_OUTPUTS_DEFAULT = "drop"


def parse_self_outputs(policy: str) -> float:
    """`keep` | `drop` | `weight=W` (0 <= W <= 1) -> the share of self outputs exported (1.0, 0.0, W)."""
    p = (policy or "").strip().lower()
    if p == "keep":
        return 1.0
    if p == "drop":
        return 0.0
    if p.startswith("weight="):
        try:
            w = float(p.split("=", 1)[1])
        except ValueError:
            w = -1.0
        if 0.0 <= w <= 1.0:
            return w
    raise GtExtError(f"--self-outputs {policy!r}: expected keep, drop or weight=W with 0 <= W <= 1")


def _kept_share(ex_id: str, share: float) -> bool:
    """Deterministic pick of `share` of the examples by id (the same ones on every export)."""
    return share >= 1.0 or (share > 0.0 and int(ex_id[:8], 16) / 16**8 < share)


def write_shards(store: Store, out: str | os.PathLike, rig: str | None = None, val_pct: int = 10,
                 overwrite: bool = False, self_outputs: str = SELF_OUTPUTS_DEFAULT) -> dict[str, Any]:
    """Write the shards and manifest to `out`; return the manifest.

    `rig`: export for one rig: its own examples, town-level ones, and those of rigs that opted in
    to sharing. Without it, the whole store.
    `self_outputs`: what to do with the served models' own sessions (`SELF_SOURCE`): `drop`
    (default, see `SELF_OUTPUTS_DEFAULT`), `keep`, or `weight=W`: a deterministic share W of them
    (by example id), so they count W times as much as they would in full. The policy applies to SFT
    records and to the chosen side of DPO pairs; a served model's failure stays usable as a DPO
    rejected answer (learning what not to do is not learning from its own output).
    """
    if not 0 <= val_pct < 100:
        raise GtExtError(f"--val-pct must be in 0..99, got {val_pct}")
    share = parse_self_outputs(self_outputs)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise GtExtError(f"{out} exists and is not a corpus export: refusing to replace it")
        if not overwrite:
            raise GtExtError(f"{out} already holds an export: pass --overwrite to replace it")
    allowed = None if rig is None else ({rig} | shared_rigs(store))
    verifier = Scrubber(use_detect_secrets=False)  # last line of defence: no certain secret may leave

    examples = [e for e in store.query(status="active") if e.messages and e.role]
    if allowed is not None:
        examples = [e for e in examples if e.rig is None or e.rig in allowed]
    excluded = 0
    clean: list[StoredExample] = []
    for e in examples:
        if any(verifier.scan(m["content"]) for m in e.messages or []):
            excluded += 1
            log.error("example %s still holds a detectable secret after scrubbing: not exported", e.id[:12])
            continue
        clean.append(e)

    def usable(e: StoredExample) -> bool:  # as an SFT record or a DPO chosen answer
        return e.source != SELF_SOURCE or _kept_share(e.id, share)

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
            "rig": rig,
            "val_pct": val_pct,
            "excluded_unsafe": excluded,
            "self_outputs": {"policy": self_outputs, "share": share, "examples": n_self, "kept": n_self_kept},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for p in tmp.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(tmp, 0o755)
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
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):  # binary lines end at b"\n" only
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise GtExtError(f"{path}:{lineno}: not UTF-8 (byte {e.start})") from None
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GtExtError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise GtExtError(f"{path}:{lineno}: expected a JSON object")
                rec["_where"] = f"{path}:{lineno}"
                yield rec
