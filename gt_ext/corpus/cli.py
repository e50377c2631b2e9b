"""`gt-ext corpus`: collect, inspect, review and export the training corpus.

Heavy imports stay inside the commands (the CLI must start fast for the `gt` shim).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(
    help="Training corpus: collect sessions, scrub secrets, review quarantine, export shards.",
    no_args_is_help=True,
    add_completion=False,
)
quarantine_app = typer.Typer(help="Review examples held back for uncertain secrets or parse errors.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")

_state: dict[str, Path | None] = {"store": None, "town": None}

StoreOpt = Annotated[Path | None, typer.Option("--store", envvar="GT_EXT_CORPUS",
                                               help="Corpus folder (default: <town>/.corpus or $GT_EXT_HOME/corpus).")]
TownOpt = Annotated[Path | None, typer.Option("--town", help="Town root (default: found from the current folder).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def _root(store: StoreOpt = None, town: TownOpt = None) -> None:
    """Training corpus: collect sessions, scrub secrets, review quarantine, export shards."""
    _state["store"], _state["town"] = store, town


def _store():
    from gt_ext.corpus.store import Store

    return Store.open(_state["store"], town=_state["town"])


def _town_root() -> Path | None:
    if _state["town"] is not None:
        return _state["town"]
    from gt_ext.corpus.store import _find_town_root

    return _find_town_root()


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


_ADD_FORMATS = """Formats (told apart by extension, then content):

.md: sections headed ## User / ## Assistant / ## System / ## Tool, with optional front matter
between --- lines (role: witness, task: patrol, rig: demo, outcome: success).

.json: {"messages": [{"role": "user", "content": "..."}, ...], "role": "witness", "task": ...},
or a list of such objects.

.jsonl: one such object a line; or a Claude Code transcript (~/.claude/projects/<dir>/<id>.jsonl);
or a pi session file. A transcript's role comes from its work dir when that lies inside the town.

Message roles: system, user, assistant, tool. Every example needs a gt role (--role, the file's
own, or the work dir's); when one has none, nothing is added."""


@app.command(epilog=_ADD_FORMATS)
def add(files: Annotated[list[Path], typer.Argument(help="Example files: .md, .json, .jsonl (see the formats below).")],
        role: Annotated[str | None, typer.Option(help="Role of every example (mayor, deacon, boot, dog, witness, refinery, "
                                                      "polecat, crew); else the file's own.")] = None,
        task: Annotated[str | None, typer.Option(help="Task tag (bead-creation, code-review, ...).")] = None,
        rig: Annotated[str | None, typer.Option(help="Rig tag.")] = None,
        outcome: Annotated[str | None, typer.Option(help="success or failure.")] = None,
        as_json: JsonOpt = False) -> None:
    """Add curated examples; each is scrubbed and gated like collected sessions."""
    from gt_ext.corpus.collect import add_files
    from gt_ext.roles import check_role, check_task

    if role:
        check_role(role)
    if task:
        check_task(task)
    if outcome and outcome not in ("success", "failure"):
        raise GtExtError(f"--outcome must be success or failure, got {outcome!r}")
    with _store() as st:
        rep = add_files(st, files, role=role, task=task, rig=rig, outcome=outcome, town_root=_town_root())
    if as_json:
        _print_json(rep.to_dict())
        return
    active = rep.stored.get("active", 0)
    held = {k: v for k, v in rep.stored.items() if k != "active"}
    print(f"added {active} of {len(rep.outcomes)} example(s) to the corpus"
          + (" (" + ", ".join(f"{v} {k}" for k, v in sorted(held.items())) + ")" if held else ""))
    for o in rep.outcomes:
        if o["status"] != "active":
            what = {"duplicate": "not stored", "unchanged": "not stored"}.get(o["status"], o["status"])
            print(f"  {o['file']}: {what}: {o['reason']}" + (f" [{o['id'][:12]}]" if o["id"] else ""))


def _check_rig(st, rig: str | None) -> None:
    """A --rig value must name a rig: one of the town's, or one the corpus has examples of."""
    if not rig:
        return
    known = {r for (r,) in st.db.execute("SELECT DISTINCT rig FROM examples WHERE rig IS NOT NULL")}
    town = _town_root()
    if town is not None:
        from gt_ext.gastown.town import Town

        known |= {r.name for r in Town(Path(town)).rigs()}
    if rig not in known:
        raise GtExtError(f"--rig {rig!r}: no such rig in {town or st.root} (rigs: {', '.join(sorted(known)) or 'none'})")


@app.command("list")
def list_(status: Annotated[str, typer.Option(help="active, quarantined, review, rejected, superseded or all.")] = "active",
          role: Annotated[str | None, typer.Option(help="mayor, deacon, boot, dog, witness, refinery, polecat or crew.")] = None,
          task: Annotated[str | None, typer.Option(help="A task tag (patrol, code-review, ...).")] = None,
          rig: Annotated[str | None, typer.Option(help="A rig of the town.")] = None,
          source: Annotated[str | None, typer.Option(help="claude, node0, pi (their transcripts) or a provenance "
                                                          "source: pane, markdown, curated, artifact, gt-prime, sample.")] = None,
          limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
          as_json: JsonOpt = False) -> None:
    """List examples (tags only, no content)."""
    from gt_ext.corpus.ingest import SOURCES
    from gt_ext.corpus.store import STATUSES
    from gt_ext.roles import check_role, check_task

    if status != "all" and status not in STATUSES:
        raise GtExtError(f"--status {status!r}: expected one of {', '.join(STATUSES)} or all")
    if role:
        check_role(role)
    if task:
        check_task(task)
    if source is not None:
        source = source if source in SOURCES else f"{source}-jsonl"
        if source not in SOURCES:
            raise GtExtError(f"--source {source.removesuffix('-jsonl')!r}: expected claude, node0, pi or one of "
                             + ", ".join(s for s in SOURCES if not s.endswith("-jsonl")))
    with _store() as st:
        _check_rig(st, rig)
        rows = [e.summary() for e in st.query(status=None if status == "all" else status, role=role, task=task, rig=rig,
                                              source=source, limit=limit)]
    if as_json:
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("id", "role", "task", "rig", "bead", "source", "model", "outcome", "label", "status", "turns")
    for r in rows:
        t.add_row(r["id"][:12], r["role"] or "-", r["task"] or "-", r["rig"] or "-", r["bead"] or "-", r["source"],
                  r["model"] or "-", r["outcome"], r["label"], r["status"], str(r["turns"]))
    Console().print(t)


def _masked(st, ex, reveal: bool) -> list[dict[str, str]]:
    """Messages as stored: suspected secrets are sealed (`<SEALED:type:n>` markers); `reveal`
    decrypts them with the store's quarantine key. Spans of examples stored before sealing
    existed are masked by a fresh scan unless `reveal`."""
    from gt_ext.corpus.scrub import default_scrubber
    from gt_ext.corpus.seal import Sealer, unseal

    sealed = st.sealed(ex.id)
    out = []
    for m in ex.messages or []:
        text = m["content"]
        if reveal and sealed:
            text = unseal(text, sealed, Sealer(st.root))
        elif not reveal:
            for f in sorted(default_scrubber().scan(text), key=lambda f: f.start, reverse=True):
                if f.confidence == "uncertain":
                    text = text[:f.start] + f"[UNCERTAIN:{f.type}]" + text[f.end:]
        out.append({"role": m["role"], "content": text})
    return out


@app.command()
def show(example_id: Annotated[str, typer.Argument(help="Example id or unique prefix.")], as_json: JsonOpt = False) -> None:
    """Show one example: tags, provenance, findings and messages (uncertain spans masked)."""
    with _store() as st:
        ex = st.get(example_id)
        data = ex.summary() | {"provenance": ex.provenance(), "findings": ex.findings, "messages": _masked(st, ex, False)}
    if as_json:
        _print_json(data)
        return
    for k, v in ex.summary().items():
        print(f"{k}: {v}")
    for m in data["messages"]:
        print(f"\n--- {m['role']} ---\n{m['content']}")


@app.command()
def stats(as_json: JsonOpt = False) -> None:
    """Counts by status, role, task, label, source and outcome; task-level preference pairs (DPO)."""
    with _store() as st:
        s = st.stats()
        s["spool_pending"] = len(list(st.spool_dir.glob("*.json")))
    if as_json:
        _print_json(s)
        return
    print(f"total: {s['total']}   spool pending: {s['spool_pending']}")
    for k in ("status", "role", "task", "label", "source", "outcome", "preferences"):
        print(f"{k}: " + ", ".join(f"{a}={b}" for a, b in s[k].items()))


@app.command()
def audit(sample: Annotated[int, typer.Option(min=0, help="How many scrubbed examples to show for review.")] = 5,
          seed: Annotated[int, typer.Option()] = 0, as_json: JsonOpt = False) -> None:
    """Sample scrubbed examples for review and count findings per detector."""
    import random

    with _store() as st:
        rows = st.query(status=None)
    per: dict[str, dict[str, int]] = {}
    for e in rows:
        for f in e.findings:
            key = f"{f['detector']}:{f['type']}"
            per.setdefault(key, {"certain": 0, "uncertain": 0})[f["confidence"]] += 1
    active = [e for e in rows if e.status == "active" and e.messages]
    picked = random.Random(seed).sample(active, min(sample, len(active)))
    out = {"examples": len(rows), "detectors": dict(sorted(per.items())),
           "quarantined": sum(e.status == "quarantined" for e in rows),
           "sample": [e.summary() | {"messages": e.messages} for e in picked]}
    if as_json:
        _print_json(out)
        return
    print(f"{out['examples']} examples, {out['quarantined']} quarantined")
    for k, v in out["detectors"].items():
        print(f"  {k}: certain={v['certain']} uncertain={v['uncertain']}")
    for e in out["sample"]:
        print(f"\n=== {e['id'][:12]} {e['role']}/{e['task']} ({e['source']}) ===")
        for m in e["messages"]:
            print(f"[{m['role']}] {m['content'][:400]}")


@quarantine_app.command("list")
def q_list(as_json: JsonOpt = False) -> None:
    """The review queue: examples in quarantine (uncertain secrets, parse errors, new detector hits)
    and under review (reversions of a recent artifact change, odd batches), with the reason."""
    with _store() as st:
        rows = [e.summary() for e in st.query(status="quarantined") + st.query(status="review")]
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        print(f"{r['id'][:16]}  {r['status']:<11} {r['source']:<12} {r['role'] or '-':<9} {r['reason']}")
    if not rows:
        print("nothing in quarantine or under review")


@quarantine_app.command("show")
def q_show(example_id: str,
           reveal: Annotated[bool, typer.Option(help="Decrypt the sealed spans (needs the store's quarantine key).")] = False,
           as_json: JsonOpt = False) -> None:
    """Show a quarantined example; its suspected secrets are sealed (encrypted) unless --reveal."""
    with _store() as st:
        ex = st.get(example_id)
        data = ex.summary() | {"findings": ex.findings, "messages": _masked(st, ex, reveal)}
    if as_json:
        _print_json(data)
        return
    print(f"{ex.id}  reason: {ex.reason}")
    for m in data["messages"]:
        print(f"\n--- {m['role']} ---\n{m['content']}")


@quarantine_app.command("release")
def q_release(example_id: str) -> None:
    """Release a reviewed example into the corpus (you judged its uncertain spans harmless)."""
    with _store() as st:
        ex = st.get(example_id)
        if ex.status not in ("quarantined", "review"):
            raise GtExtError(f"example {ex.id[:12]} is {ex.status}, not in quarantine or review")
        if ex.messages is None:
            raise GtExtError(f"example {ex.id[:12]} could not be parsed ({ex.reason}): drop it and fix the source")
        if ex.status == "review" and ex.artifact_key:
            # An artifact version held for review (a reversion): releasing it applies it.
            from gt_ext.corpus.artifacts import release_version

            with st.tx():
                ids = release_version(st, ex.id)
            print(f"released {ex.id[:12]}: now the current version of {ex.artifact_key} ({len(ids)} part(s))")
            return
        sealed = st.sealed(ex.id)
        if sealed:
            # Uncertain spans go back as they were (judged harmless); a rescan's certain hits
            # become their typed placeholder.
            from gt_ext.corpus.seal import Sealer, unseal

            sealer = Sealer(st.root)
            msgs = [{**m, "content": unseal(m["content"], sealed, sealer, reveal_all=False)} for m in ex.messages]
            st.unseal_into(ex.id, msgs, "active", "released by reviewer")
        else:
            st.set_status(ex.id, "active", "released by reviewer")
    print(f"released {ex.id[:12]}")


@quarantine_app.command("drop")
def q_drop(example_id: str) -> None:
    """Delete a quarantined example for good."""
    with _store() as st:
        ex = st.get(example_id)
        if ex.status not in ("quarantined", "review"):
            raise GtExtError(f"example {ex.id[:12]} is {ex.status}, not in quarantine or review")
        st.delete(ex.id)
    print(f"dropped {ex.id[:12]}")


def _job_rig(rig: str | None) -> str | None:
    """The rig an export is for: --rig, else GT_RIG (set by gt in a rig's sessions), else the rig
    whose folder holds the current directory; None = town level."""
    import os

    if rig:
        return rig
    if os.environ.get("GT_RIG"):
        return os.environ["GT_RIG"]
    town = _town_root()
    if town is not None:
        try:
            rel = Path.cwd().resolve().relative_to(Path(town).resolve())
        except ValueError:
            return None
        if rel.parts and (Path(town) / rel.parts[0] / "settings").is_dir() and rel.parts[0] != "settings":
            return rel.parts[0]
    return None


@app.command()
def export(out: Annotated[Path, typer.Option("--out", help="Folder to write (manifest.json, sft/, dpo/).")],
           rig: Annotated[str | None, typer.Option(help="The job's rig: its examples, town-level ones and those of rigs that share "
                                                        "(default: $GT_RIG, else the rig of the current folder, else town-level only).")] = None,
           all_rigs: Annotated[bool, typer.Option("--all-rigs", help="Every rig's examples, shared or not (an explicit choice).")] = False,
           role: Annotated[str | None, typer.Option(help="Only this role's examples.")] = None,
           stale_sessions: Annotated[str, typer.Option("--stale-sessions", help="Sessions recorded before a convention artifact "
                                                       "(CLAUDE.md, formula, ...) changed: drop, keep or weight=W (keep a share W).")] = "drop",
           val_pct: Annotated[int, typer.Option(help="Percent of prompts held out for validation.")] = 10,
           overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out.")] = False,
           if_missing: Annotated[bool, typer.Option(help="Keep an existing export in --out (formulas given a corpus_path).")] = False,
           self_outputs: Annotated[str, typer.Option(
               help="Sessions served by this project's own models: drop (default: a model trained on its own "
                    "unreviewed output gets worse), keep, or weight=W (a fixed share W of them, 0 < W < 1).")] = "drop",
           as_json: JsonOpt = False) -> None:
    """Write SFT and DPO shards with a manifest (counts, file hashes, one corpus hash).

    Rig-local by default: a rig's examples leave it only when the rig opted in to sharing in its own
    settings (`<town>/<rig>/settings/gt-ext.json` `{"corpus": {"share": true}}`)."""
    from gt_ext.corpus.shards import MANIFEST, StalePolicy, parse_self_outputs, read_manifest, write_shards
    from gt_ext.roles import check_role

    policy = StalePolicy.parse(stale_sessions)
    own = parse_self_outputs(self_outputs)  # a bad value is an error before anything is read
    if role:
        check_role(role)
    if out.exists() and not out.is_dir():
        raise GtExtError(f"--out {out}: is a file; the export is a folder (manifest.json, sft/, dpo/)")
    if if_missing and (out / MANIFEST).is_file():
        m = read_manifest(out)
        if as_json:
            _print_json(m)
        else:
            print(f"kept existing export {out}: corpus_hash {m['corpus_hash'][:16]}")
        return

    with _store() as st:
        _check_rig(st, rig)
        m = write_shards(st, out, rig=None if all_rigs else _job_rig(rig), val_pct=val_pct, overwrite=overwrite,
                         all_rigs=all_rigs, role=role, stale=policy, self_outputs=own)
    if as_json:
        _print_json(m)
        return
    n_sft = sum(v for r in m["counts"]["sft"].values() for t in r.values() for v in t.values())
    n_dpo = sum(v for r in m["counts"]["dpo"].values() for t in r.values() for v in t.values())
    st_ = m["stale_sessions"]
    print(f"wrote {out} ({m['scope']}): {n_sft} sft examples, {n_dpo} dpo pairs, corpus_hash {m['corpus_hash'][:16]}")
    if st_["stale"]:
        print(f"  {st_['stale']} session example(s) predate a convention change ({st_['policy']}: {st_['exported']} exported)")


@app.command()
def process(claude_dir: Annotated[Path | None, typer.Option(help="Claude projects folder (default ~/.claude/projects).")] = None,
            scan: Annotated[bool, typer.Option(help="Also take transcripts no hook spooled (wisps, bead-less sessions).")] = False,
            panes: Annotated[bool, typer.Option(help="Also capture live tmux panes.")] = False,
            artifacts: Annotated[bool, typer.Option(help="Also take CLAUDE.md, AGENTS.md, formulas, spec/plan files.")] = False,
            prime: Annotated[bool, typer.Option(help="With --artifacts: also each role's real `gt prime --dry-run` output.")] = True,
            trigger: Annotated[bool, typer.Option(help="Hook mode: quiet, return at once if another processor runs, log to <store>/process.log.")] = False,
            as_json: JsonOpt = False) -> None:
    """Process the spool written by the hooks (idempotent, safe to kill and rerun)."""
    from gt_ext.corpus.collect import capture_panes, process_spool, scan_transcripts

    town = _town_root()
    if trigger:
        import logging

        from gt_ext.corpus.collect import trigger as run_trigger

        with _store() as st:
            from gt_ext.private import private_file

            handler = logging.FileHandler(private_file(st.root / "process.log"))
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger("gt_ext").addHandler(handler)
            logging.getLogger("gt_ext").setLevel(logging.INFO)
            rep = run_trigger(st, town, claude_dir)
        if as_json:
            _print_json(rep.to_dict() if rep else {"busy": True})
        return
    with _store() as st:
        from gt_ext.corpus.rescan import detectors_changed

        if detectors_changed(st):
            print("warning: the scrubber's detectors changed since this corpus was scrubbed: run `gt corpus rescan`",
                  file=sys.stderr)
        rep = process_spool(st, town, claude_dir, progress=not as_json and sys.stderr.isatty())
        reports = [rep]
        if scan:
            reports.append(scan_transcripts(st, claude_dir, progress=not as_json and sys.stderr.isatty(), town_root=town))
        if panes:
            reports.append(capture_panes(st))
        art = None
        if artifacts:
            if town is None:
                raise GtExtError("--artifacts needs a town: pass --town DIR")
            from gt_ext.corpus.artifacts import collect_artifacts

            art = collect_artifacts(st, town, prime=prime)
    merged = reports[0].to_dict()
    if art is not None:
        merged["artifacts"] = art
    for r in reports[1:]:
        d = r.to_dict()
        merged["sessions"] += d["sessions"]
        merged["duplicates"] += d["duplicates"]
        merged["errors"] += d["errors"]
        merged["flags"] += d["flags"]
        for k, v in d["stored"].items():
            merged["stored"][k] = merged["stored"].get(k, 0) + v
    if as_json:
        _print_json(merged)
        return
    print(f"events {merged['events']}, sessions {merged['sessions']}, stored {merged['stored'] or 'nothing new'}, "
          f"duplicates {merged['duplicates']}")
    for e in merged["errors"]:
        print(f"  error: {e}")
    for b in merged["unresolved_beads"]:
        print(f"  no session found yet for bead {b}")
    for f in merged["flags"]:
        print(f"  batch flagged for review: {f}")
    if "artifacts" in merged:
        print("  artifacts: " + (", ".join(f"{k}={v}" for k, v in merged["artifacts"].items()) or "none found"))


@app.command()
def rescan(force: Annotated[bool, typer.Option(help="Rescan even when the detectors did not change.")] = False,
           as_json: JsonOpt = False) -> None:
    """Re-scrub stored examples with the current detectors; new hits go to quarantine.

    Runs when the scrubber's detectors changed since the examples were stored (a new release), or
    with --force. Stored text is not rewritten: review the quarantine (`gt corpus quarantine list`)."""
    from gt_ext.corpus.rescan import rescan as run_rescan

    with _store() as st:
        rep = run_rescan(st, force=force)
    if as_json:
        _print_json(rep)
        return
    if rep["skipped"]:
        print(f"detectors unchanged ({rep['current']}): nothing to rescan (--force rescans anyway)")
        return
    print(f"rescanned {rep['rescanned']} example(s) with detectors {rep['current']} (were {rep['previous'] or 'unknown'}): "
          f"{rep['quarantined']} quarantined" + (f" ({', '.join(f'{k} {v}' for k, v in rep['findings'].items())})"
                                                  if rep["findings"] else ""))


@app.command()
def scrub(file: Annotated[str, typer.Argument(help="File to scrub, or - for stdin.")], as_json: JsonOpt = False) -> None:
    """Print the scrubbed text (--json: findings with type, span, confidence, and the quarantine verdict)."""
    from gt_ext.corpus.scrub import scrub_text

    if file == "-":
        text = sys.stdin.read()
    else:
        if Path(file).is_dir():
            raise GtExtError(f"{file}: is a folder; scrub one file at a time (or - for stdin)")
        try:
            text = Path(file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GtExtError(f"{file}: file not found") from None
        except UnicodeDecodeError as e:
            raise GtExtError(f"{file}: not UTF-8 text (byte {e.start})") from None
    r = scrub_text(text)
    if as_json:
        _print_json({"quarantine": r.quarantine, "counts": r.counts(), "findings": [f.to_dict() for f in r.findings],
                     "text": r.text})
    else:
        sys.stdout.write(r.text)


@app.command()
def sample(seed: Annotated[int, typer.Option(help="Same seed, same history.")] = 0,
           witness: Annotated[int, typer.Option(help="Witness patrols to generate.")] = 60,
           per_role: Annotated[int, typer.Option(help="Sessions per other role.")] = 12,
           reports: Annotated[int, typer.Option(help="Extra single-decision witness reports per patrol.")] = 1,
           write_town: Annotated[Path | None, typer.Option(help="Instead of storing, write transcripts + events into this town.")] = None,
           claude_dir: Annotated[Path | None, typer.Option(help="Where to write transcripts with --write-town.")] = None,
           as_json: JsonOpt = False) -> None:
    """Generate a sample town history (deterministic) and store it, or write it as a town would."""
    from gt_ext.corpus.overlap import check_no_overlap, eval_prompts
    from gt_ext.corpus.sample_town import generate, ingest_sessions, write_history

    sessions = generate(seed, witness=witness, per_role=per_role, reports=reports)
    check_no_overlap((m["content"] for s in sessions for m in s.messages), eval_prompts(), what="sample town")
    if write_town:
        from gt_ext.corpus.collect import claude_projects_dir

        issues = write_history(sessions, write_town, claude_dir or claude_projects_dir())
        res = {"sessions": len(sessions), "beads": len(issues)}
    else:
        with _store() as st:
            res = ingest_sessions(st, sessions) | {"sessions": len(sessions)}
    if as_json:
        _print_json(res)
    else:
        print(", ".join(f"{k}: {v}" for k, v in res.items()))


@app.command("patrol")
def patrol(role: Annotated[str, typer.Option(help="Patrol role: witness, refinery, deacon or dog.")],
           seed: Annotated[int, typer.Option(help="Same seed, same decisions.")] = 0,
           reps: Annotated[int, typer.Option(help="Rounds of each step's situations per training family (every action equally often).")] = 1,
           as_json: JsonOpt = False) -> None:
    """Store formula patrol decisions of ROLE (training families only), staged with the real bd,
    git, tmux and dolt (cached after the first run), as success + coherent-misreading pairs."""
    from gt_ext.corpus.patrol.build import sessions
    from gt_ext.corpus.patrol.steps import ROLES
    from gt_ext.corpus.sample_town import ingest_sessions

    if role not in ROLES:
        raise GtExtError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    made = sessions(role, seed=seed, reps=reps, progress=not as_json)
    with _store() as st:
        res = ingest_sessions(st, made) | {"sessions": len(made)}
    if as_json:
        _print_json(res)
    else:
        print(", ".join(f"{k}: {v}" for k, v in res.items()))


@app.command("patrol-suite")
def patrol_suite(role: Annotated[str, typer.Option(help="Patrol role: witness, refinery, deacon or dog.")],
                 out: Annotated[Path | None, typer.Option(help="Suite folder (default: the builtin <role>-patrol suite).")] = None,
                 seed: Annotated[int, typer.Option(help="Same seed, same cases.")] = 0,
                 reps: Annotated[int, typer.Option(help="Rounds of each step's situations per held-out family (every action equally often).")] = 2) -> None:
    """Write the held-out patrol suite of ROLE (families c and r) as a promptfoo suite."""
    from gt_ext.corpus.patrol.build import write_suite

    target = out or Path(__file__).resolve().parent.parent / "evals" / "tasks" / f"{role}-patrol"
    n = write_suite(role, target, seed=seed, reps=reps, progress=True)
    print(f"{n} tests written to {target}")
