"""`gt-ext prefs pick|drop`: decide a comparison, keep the winner's work, learn from the pair.

A pick, in order (every check before any write):
1. the comparison must be pending (both outcomes recorded) and the winner's branches must exist;
2. the winner comes from a person (`--winner A`) or from the measured failure modes (`--auto`,
   `gt_ext.prefs.outcome.auto_pick`; no difference -> the comparison stays undecided);
3. the two transcripts become one DPO pair (shared opening, the first assistant turns where they
   part), scrubbed like every corpus example, with provenance: comparison, bead, both models, who
   or which rule picked, and why; it goes into the corpus store (`preferences`);
4. the winner's git branch merges into the rig's default branch, then its Dolt branch into the
   beads' main. A conflict on either refuses the pick: the git merge is undone, the pair taken
   back, both sides stay as they were, and the conflict is reported (exit 1). Nothing is forced;
5. the loser's branches and clone are dropped, and the winner's, now merged, too.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.gastown.branches import MAIN, BeadsDatabase
from gt_ext.gastown.town import Town
from gt_ext.gastown.worktree import RigRepo
from gt_ext.prefs.outcome import auto_pick
from gt_ext.prefs.record import Comparison, Decision, Outcome, PrefsStore
from gt_ext.prefs.sling import _remove_branches, transcript_messages

log = logging.getLogger(__name__)


def build_pair(cmp: Comparison, winner: Outcome, loser: Outcome, decision: Decision) -> tuple[dict[str, Any] | None, str]:
    """The comparison's DPO pair record (scrubbed), or None and why there is none."""
    from gt_ext.corpus.format import dpo_id
    from gt_ext.corpus.scrub import default_scrubber
    from gt_ext.corpus.shards import split_at_divergence
    from gt_ext.corpus.tags import task_from_content

    chosen = transcript_messages(Path(winner.transcript) if winner.transcript else None, cmp.role, cmp.rig)
    rejected = transcript_messages(Path(loser.transcript) if loser.transcript else None, cmp.role, cmp.rig)
    for o, msgs in ((winner, chosen), (loser, rejected)):
        if not any(m["role"] == "assistant" for m in msgs):
            return None, f"no DPO pair: {o.label} ({o.model}) left no assistant turn in a transcript"
    scrubber = default_scrubber()
    findings: list[dict[str, Any]] = []

    def clean(msgs: list[dict[str, str]], side: str) -> list[dict[str, str]]:
        out = []
        for i, m in enumerate(msgs):
            r = scrubber.scrub(m["content"])
            findings.extend(f.to_dict() | {"side": side, "msg": i} for f in r.findings)
            out.append({"role": m["role"], "content": r.text})
        return out

    split = split_at_divergence(clean(chosen, "chosen"), clean(rejected, "rejected"))
    if split is None:
        return None, "no DPO pair: the two transcripts never part at an assistant turn"
    prompt, chosen_turn, rejected_turn = split
    uncertain = sorted({f["type"] for f in findings if f["confidence"] == "uncertain"})
    provenance = {
        "source": "prefs", "comparison": cmp.id, "bead": cmp.bead, "rig": cmp.rig,
        "models": {"chosen": winner.model_ref, "rejected": loser.model_ref},
        "picked_by": decision.by, "rule": decision.rule, "why": decision.why, "time": decision.time,
        "session": Path(winner.transcript).stem if winner.transcript else "",
        "rejected_session": Path(loser.transcript).stem if loser.transcript else "",
        "failures": {"chosen": winner.failure_modes, "rejected": loser.failure_modes},
    }
    rec = {"id": dpo_id(prompt, chosen_turn, rejected_turn), "role": cmp.role,
           "task": task_from_content([*prompt, {"role": "assistant", "content": chosen_turn}], cmp.role),
           "rig": cmp.rig, "bead": cmp.bead, "comparison": cmp.id, "prompt": prompt, "chosen": chosen_turn,
           "rejected": rejected_turn, "provenance": provenance,
           "status": "quarantined" if uncertain else "active",
           "reason": ("uncertain findings: " + ", ".join(uncertain)) if uncertain else None, "findings": findings}
    return rec, "pair stored" if not uncertain else "pair quarantined (uncertain scrub findings)"


def _person(name: str | None) -> str:
    return name or os.environ.get("BD_ACTOR") or os.environ.get("GIT_AUTHOR_NAME") or getpass.getuser()


def _pickable(cmp: Comparison) -> None:
    st = cmp.effective_status()
    if st in ("running", "interrupted"):
        raise GtExtError(f"comparison {cmp.id} is {st}: its outcomes are not recorded yet, so there is nothing "
                         f"to pick" + (f" (drop it with `gt-ext prefs drop {cmp.id}`)" if st == "interrupted" else ""))
    if st == "decided":
        assert cmp.decision is not None
        w = cmp.outcomes[cmp.decision.winner]
        raise GtExtError(f"comparison {cmp.id} is already decided: {w.label} ({w.model}) won")
    if st != "pending":
        raise GtExtError(f"comparison {cmp.id} is {st}; only a pending comparison can be picked")


def pick(town: Town, task: str, winner: str | None = None, auto: bool = False, why: str = "",
         person: str | None = None, echo: Callable[[str], None] = log.info,
         env: dict[str, str] | None = None) -> Comparison:
    """Decide comparison `task` (id or bead): see module doc. Returns the decided comparison."""
    from gt_ext.corpus.store import Store

    if (winner is None) == (not auto):
        raise GtExtError("give exactly one of --winner A (a person picks) or --auto (the rules pick)")
    prefs = PrefsStore.for_town(town.root)
    with prefs.lock():
        cmp = prefs.find(task)
        _pickable(cmp)
        if auto:
            verdict = auto_pick(cmp)
            w, lo = cmp.outcomes[verdict.winner], cmp.outcomes[verdict.loser]
            decision = Decision(winner=w.label, loser=lo.label, by="rule:auto", rule=verdict.rule,
                                why=verdict.why + (f" | {why}" if why else ""))
        else:
            assert winner is not None
            w = cmp.outcome_for(winner)
            lo = cmp.outcomes["b" if w.label == "a" else "a"]
            decision = Decision(winner=w.label, loser=lo.label, by=f"person:{_person(person)}", rule="manual", why=why)
        db = BeadsDatabase.for_rig(town, cmp.rig)
        repo = RigRepo.for_rig(town, cmp.rig, env=env)
        into = cmp.base.get("git_branch") or repo.default_branch()
        if not db.has_branch(w.dolt_branch):
            raise GtExtError(f"comparison {cmp.id}: the winner's beads branch {w.dolt_branch} is missing "
                             f"(database {db.database}); nothing merged")
        if not repo.has_branch(w.git_branch):
            raise GtExtError(f"comparison {cmp.id}: the winner's git branch {w.git_branch} is missing "
                             f"({repo.path}); nothing merged")
        pair, note = build_pair(cmp, w, lo, decision)
        decision.pair_note = note
        # The corpus the `gt corpus` commands use: $GT_EXT_CORPUS, else the town's.
        with Store.open(os.environ.get("GT_EXT_CORPUS") or None, town=town.root) as corpus:
            stored = bool(pair) and corpus.add_preference(pair)
            decision.pair_id = pair["id"] if pair else None
            old_head = repo.head(into)
            git_res = repo.merge(w.git_branch, into, f"prefs {cmp.id}: {w.model_ref}'s work on {cmp.bead}")
            refused: tuple[str, dict[str, Any]] | None = None
            if not git_res.merged:
                refused = ("git", git_res.to_dict())
            else:
                dolt_res = db.merge(w.dolt_branch, MAIN, f"prefs {cmp.id}: {w.model_ref}'s beads work on {cmp.bead}")
                if not dolt_res.merged:
                    if not git_res.up_to_date and old_head and git_res.commit:
                        if not repo.reset_branch(into, git_res.commit, old_head):
                            log.error("could not undo the git merge %s on %s", git_res.commit, into)
                    refused = ("dolt", dolt_res.to_dict())
            if refused is not None:
                if stored and pair:
                    corpus.delete_preference(pair["id"])
                kind, res = refused
                cmp.history.append({"time": decision.time, "event": f"pick refused: {kind} merge",
                                    "winner": w.label, "by": decision.by, "result": res})
                prefs.save(cmp)
                branch = w.git_branch if kind == "git" else w.dolt_branch
                raise GtExtError(f"comparison {cmp.id}: {kind} merge of {branch} refused ({res.get('message')}); "
                                 f"nothing merged, both sides kept", exit_code=1)
        decision.merge = {"git": git_res.to_dict(), "dolt": dolt_res.to_dict()}
        decision.merge["dropped"] = _remove_branches(cmp, db, repo, (lo.label, w.label))
        cmp.decision, cmp.status = decision, "decided"
        prefs.save(cmp)
        echo(f"{cmp.id}: {w.label} ({w.model}) won ({decision.by}{', ' + decision.rule if decision.rule != 'manual' else ''}); "
             f"{note}; merged git {w.git_branch} -> {into}, beads {w.dolt_branch} -> {MAIN}")
        return cmp


def drop(town: Town, task: str, env: dict[str, str] | None = None) -> Comparison:
    """Abandon a comparison that is not decided: remove both sides' branches, merge nothing."""
    prefs = PrefsStore.for_town(town.root)
    with prefs.lock():
        cmp = prefs.find(task)
        st = cmp.effective_status()
        if st == "running":
            raise GtExtError(f"comparison {cmp.id} is running (sling pid {cmp.pid}); stop it first")
        if st in ("decided", "dropped"):
            raise GtExtError(f"comparison {cmp.id} is already {st}")
        removed = _remove_branches(cmp, BeadsDatabase.for_rig(town, cmp.rig), RigRepo.for_rig(town, cmp.rig, env=env))
        cmp.status, cmp.pid = "dropped", None
        cmp.history.append({"event": "dropped", "removed": removed})
        prefs.save(cmp)
        return cmp
