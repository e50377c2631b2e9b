"""`gt-ext rag`: build, inspect and query the town's RAG index."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="RAG over the town's live state: reindex, status, query.", no_args_is_help=True)

TOWN_OPT = typer.Option(None, "--town", help="Town root (default: found from the cwd, $GT_TOWN_ROOT or $GT_ROOT).")


@app.command()
def reindex(
    full: bool = typer.Option(False, "--full", help="Re-read every source, not only those that changed."),
    town: Path | None = TOWN_OPT,
    wait: bool = typer.Option(False, "--wait", help="Wait for a running indexer instead of failing."),
    sessions: Path | None = typer.Option(None, "--sessions", help="Exported corpus folder whose newest sessions to index (default $GT_EXT_RAG_SESSIONS)."),
    trigger: bool = typer.Option(False, "--trigger", help="Hook mode: quiet, return at once if another indexer runs "
                                 "(it picks up queued events), log to <town>/.rag/reindex.log."),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON."),
) -> None:
    """Bring `<town>/.rag/` in line with the town's beads, settings, docs, formulas and sessions."""
    from gt_ext.errors import GtExtError
    from gt_ext.rag.index import reindex as run
    from gt_ext.rag.sources import resolve_town

    if sessions is not None and not sessions.is_dir():
        raise GtExtError(f"--sessions {sessions}: no such folder")
    root = resolve_town(town)
    if trigger:
        import logging

        from gt_ext.rag.index import rag_dir
        from gt_ext.rag.index import trigger as run_trigger

        rag_dir(root).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(rag_dir(root) / "reindex.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("gt_ext").addHandler(handler)
        logging.getLogger("gt_ext").setLevel(logging.INFO)
        last = run_trigger(root, corpus_dir=sessions)
        logging.getLogger("gt_ext.rag").info("trigger: %s", json.dumps(last.to_dict()) if last else "busy")
        if as_json:
            print(json.dumps(last.to_dict() if last else {"busy": True}, indent=2))
        return
    rep = run(root, full=full, progress=not as_json, wait=wait, corpus_dir=sessions)
    if as_json:
        print(json.dumps(rep.to_dict(), indent=2))
        return
    print(f"rag: {rep.groups_synced}/{rep.groups_scanned} sources synced, +{rep.added} -{rep.deleted} chunks, "
          f"{rep.unchanged} unchanged, {rep.groups_removed} sources removed, {rep.events} spooled events; "
          f"{rep.total} chunks in {rep.seconds:.1f} s")
    for err in rep.errors:
        print(f"warning: {err}")


@app.command()
def status(town: Path | None = TOWN_OPT, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the index: chunks by kind, last run, pending spooled events, running indexer."""
    from gt_ext.rag.index import status as get_status
    from gt_ext.rag.sources import resolve_town

    st = get_status(resolve_town(town))
    if as_json:
        print(json.dumps(st, indent=2))
        return
    print(f"index:   {st['index']}{'' if st['exists'] else ' (not built: run gt-ext rag reindex)'}")
    print(f"chunks:  {st['chunks']}  " + "  ".join(f"{k}={v}" for k, v in st["kinds"].items()))
    running = f"running (pid {st['indexer_pid']})" if st["indexer_pid"] else "idle"
    print(f"sources: {st['groups']}   pending events: {st['pending_events']}   indexer: {running}")
    lr = st["last_run"]
    if lr:
        import datetime as _dt

        when = _dt.datetime.fromtimestamp(lr["time"], _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"last run: {when}{' (full)' if lr.get('full') else ''}, +{lr['added']} -{lr['deleted']}, {lr['seconds']} s")


@app.command()
def query(
    text: str = typer.Argument(..., help="The prompt to retrieve context for."),
    role: str = typer.Option(..., "--role", help="Agent role (mayor, deacon, witness, polecat, ...)."),
    rig: str | None = typer.Option(None, "--rig", help="Restrict to this rig's chunks plus town-wide ones."),
    town: Path | None = TOWN_OPT,
    k: int = typer.Option(8, "-k", min=1, max=100, help="How many chunks to retrieve (for --json)."),
    budget: int | None = typer.Option(None, "--budget", min=0,
                                      help="Token budget of the context block (default: the role's, a fifth of its gt prime)."),
    all_status: bool = typer.Option(False, "--all-status", help="Include closed beads too."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits and the block as JSON."),
) -> None:
    """Print the context block an agent of ROLE would get for TEXT (or the ranked hits with --json)."""
    from gt_ext.errors import GtExtError
    from gt_ext.rag.retrieve import (
        ACTIVE_STATUSES,
        DEFAULT_TOKENIZER,
        _tokenizer,
        assemble,
        count_tokens,
        index_exists,
        retrieve,
        role_budget,
    )
    from gt_ext.rag.sources import resolve_town

    root = resolve_town(town)
    if not index_exists(root):
        raise GtExtError(f"no RAG index in {root}/.rag: run `gt-ext rag reindex`")
    hits = retrieve(text, role=role, rig=rig, town=root, k=max(k, 24) if not as_json else k,
                    statuses=None if all_status else ACTIVE_STATUSES)
    tok = _tokenizer(DEFAULT_TOKENIZER)
    where = f"role {role}" + (f", rig {rig}" if rig else "")
    block = assemble(hits, role_budget(role) if budget is None else budget, tok, header=f"## Town context ({where})")
    if as_json:
        print(json.dumps({"query": text, "role": role, "rig": rig, "hits": [h.to_dict() for h in hits],
                          "context": block, "context_tokens": count_tokens(block, tok) if block else 0}, indent=2))
        return
    print(block or "(no matching context)")
