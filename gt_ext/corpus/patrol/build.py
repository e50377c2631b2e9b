"""Patrol decisions from staged evidence: the evidence cache, prompts, corpus sessions and suites.

    evidence(role, layouts, reps)      -> cases, staged once per scenario family and cached
    allowed(step, wording, r)          -> the actions a prompt lists: training, fresh or held-out names
    sessions(role, seed, reps)         -> SampleSessions (success + coherent misreading) for the corpus
    write_suite(role, out_dir, reps)   -> a promptfoo suite of the held-out families

A scenario family is one step staged in one town layout (`stage.LAYOUTS`: its rig, prefix and
agent names): families `a`, `b`, `d`-`g` train, `c` and `r` are held out; `r` also lists the step's
actions reordered and under other names and wording (`Action.heldout`, `Action.reworded`), so a
model must read the list it is given. Evidence is staged with the real tools once per family and
cached under `$GT_EXT_CACHE/patrol-evidence/<code hash>/` (default ~/.cache/gt-ext).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import signal
import sys
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json, atomic_write_text
from gt_ext.corpus.patrol import stage as stage_mod
from gt_ext.corpus.patrol.steps import ROLES, STEPS, Step, step, steps_for
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


def code_hash() -> str:
    """Hash of the staging code (what is staged, what is run, how it is labelled): a change
    re-stages the evidence. The step texts (`steps.py`) only shape prompts, so they are not in it."""
    h = hashlib.sha256()
    for name in ("stage.py",):
        h.update((HERE / name).read_bytes())
    h.update((HERE.parent.parent / "gastown" / "scratch.py").read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    """Where staged evidence is kept: `$GT_EXT_CACHE` (default ~/.cache/gt-ext), by code hash."""
    root = Path(os.environ.get("GT_EXT_CACHE") or Path.home() / ".cache" / "gt-ext")
    return root / "patrol-evidence" / code_hash()


# ----------------------------------------------------------------------------------- evidence
def schedule(situations: dict[str, str]) -> list[str]:
    """One rep of a step's situations, every action equally often.

    A step's situations are uneven over its actions (zombie-scan stages four ways to answer `none`
    and one to file a warrant), so one case per situation would make a held-out suite whose best
    constant answer scores 80% at that step, and teach training that prior. Each action gets as
    many cases as the action with the most situations; an action with fewer cycles through its own
    (zombie-scan: 4 x `zombie`, then `recent`, `working`, `hooked-dead`, `alive-idle`)."""
    by_action: dict[str, list[str]] = {}
    for sit, act in situations.items():
        by_action.setdefault(act, []).append(sit)
    n = max(len(v) for v in by_action.values())
    return [sits[i % len(sits)] for sits in by_action.values() for i in range(n)]


def stage_family(key: str, layout: str, reps: int, seed: int = 0) -> list[dict[str, Any]]:
    """Stage `reps` rounds of step `key`'s situations (`schedule`: every action equally often) in
    layout `layout` with the real tools; each case carries its evidence and the formula's label."""
    import shutil
    import tempfile

    from gt_ext.gastown.scratch import ScratchTown
    from gt_ext.gastown.testing import _reap_under

    stage, _, _, situations = stage_mod.SCENARIOS[key]
    lay = stage_mod.LAYOUTS[layout]
    r = random.Random(f"{seed}:{key}:{layout}")
    # The town lives in a folder of ours: a run stopped while the town is being made (inside its
    # `bd init`, before `with` can close it) still leaves nothing behind (the `finally` below).
    holder = Path(tempfile.mkdtemp(prefix="gt-stage-"))
    try:
        cases = _stage_in(ScratchTown(prefix=lay.prefix, seed=f"{seed}:{key}:{layout}", base=holder),
                          key, lay, reps, stage, situations, r)
    finally:
        _reap_under(holder)
        shutil.rmtree(holder, ignore_errors=True)
    return cases


def _stage_in(town: Any, key: str, lay: stage_mod.Layout, reps: int, stage: Any, situations: dict[str, str],
              r: random.Random) -> list[dict[str, Any]]:
    """`reps` rounds of `schedule(situations)` staged in `town`, which is closed at the end."""
    layout = lay.name
    cases = []
    with town as t:
        for rep in range(reps):
            for i, sit in enumerate(schedule(situations)):
                want = situations[sit]
                t.reset()
                case_lay = stage_mod.staged_layout(lay, r)  # training towns: fresh polecat names
                ev = stage(t, case_lay, sit, r)
                lab = stage_mod.label(key, ev, case_lay)
                if lab["action"] != want:
                    log.warning("%s/%s %s: staged for %s, the evidence reads as %s", key, layout, sit, want, lab["action"])
                cases.append({"step": key, "family": f"{key}@{layout}", "layout": layout, "situation": sit,
                              "rep": f"{rep}.{i}", "evidence": ev, "label": lab})
    return cases


def _family_file(key: str, layout: str, reps: int, seed: int) -> Path:
    # "-b": staged by `schedule` (balanced over actions); files without it are the older layout
    return cache_dir() / f"{key.replace('/', '__')}@{layout}-r{reps}-s{seed}-b.json"


_TOWN_OPEN = False  # in a staging worker: a family's scratch town is being staged
_STOPPED = False  # in a staging worker: SIGTERM arrived


def _stage_and_cache(key: str, layout: str, reps: int, seed: int) -> Path:
    global _TOWN_OPEN
    f = _family_file(key, layout, reps, seed)
    if not f.is_file():
        _TOWN_OPEN = True
        try:
            atomic_write_json(f, stage_family(key, layout, reps, seed))
        finally:
            _TOWN_OPEN = False
            if _STOPPED:  # the town is closed by now (stage_family's `finally`): end the worker
                os._exit(128 + signal.SIGTERM)
    return f


def _on_sigterm(signum: int, frame: Any) -> None:
    global _STOPPED
    _STOPPED = True
    if _TOWN_OPEN:
        sys.exit(128 + signum)  # unwind stage_family, whose `finally` closes the town
    os._exit(128 + signum)  # an idle worker has nothing to close


def _exit_on_sigterm() -> None:
    """Staging worker set-up: SIGTERM (a stopped run, `kill` of the process group) unwinds a worker
    that is staging like an error, so its `ScratchTown` closes (private tmux server and processes
    killed, folder removed) instead of being left in the temp dir, and then ends the worker; an
    idle worker ends at once. (The executor's worker loop catches the unwinding exit and would wait
    for the next task of a parent that is gone, so the worker leaves with `os._exit`.) The family's
    cache file is written only when it is complete, so the next run stages it again."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def workers() -> int:
    """Families staged at once (`GT_EXT_PATROL_WORKERS`, default 3): bd mostly waits on its
    embedded database, so a few scratch towns side by side finish sooner even on 2 cores."""
    try:
        return max(1, int(os.environ.get("GT_EXT_PATROL_WORKERS", "3")))
    except ValueError:
        raise GtExtError("GT_EXT_PATROL_WORKERS must be an integer") from None


def evidence(role: str, layouts: tuple[str, ...], reps: int, seed: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Cases of every step of `role` in `layouts`, staged once per family and then read from cache."""
    from concurrent.futures import ProcessPoolExecutor

    todo = [(s.key, lay) for s in steps_for(role) for lay in layouts]
    missing = [(k, lay) for k, lay in todo if not _family_file(k, lay, reps, seed).is_file()]
    if missing:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc=f"staging {role} patrol evidence", unit="family")
        with ProcessPoolExecutor(max_workers=min(workers(), len(missing)), initializer=_exit_on_sigterm) as pool:
            futs = [pool.submit(_stage_and_cache, k, lay, reps, seed) for k, lay in missing]
            for fut in futs:
                fut.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    out = []
    for k, lay in todo:
        out += json.loads(_family_file(k, lay, reps, seed).read_text())
    return out


# ----------------------------------------------------------------------------------- prompts
def _header(st: Step, case: dict[str, Any]) -> str:
    lay = stage_mod.LAYOUTS[case["layout"]]
    where = f", rig {lay.rig}" if st.role in ("witness", "refinery") else ""
    return f"Gas Town {st.role}{where}. Formula {st.formula}, step {st.id}: {st.brief}"


# Names a training prompt may list an action under when it is not listed by one of its own names
# ("fresh" wording): word pairs that no step uses, so the only way to answer with a listed name is
# to find the line whose rule calls for the action and copy the name written there. Without them a
# model learns each action's few training names and writes one even where the list says another
# (the held-out reworded family). Every step name, training or held-out, is left out of the pool.
_FRESH_VERBS = ("mark", "tag", "route", "sort", "post", "queue", "park", "stamp", "note", "label",
                "pin", "lodge", "slot", "book", "stage", "batch", "pick", "sign", "set", "move")
_FRESH_NOUNS = ("", "-it", "-case", "-item", "-entry", "-ticket", "-slot", "-one")


@functools.cache
def fresh_names() -> tuple[str, ...]:
    """The pool of "fresh" action names: verb-noun pairs that are no step's name (training or held-out)."""
    taken = {n for s in STEPS for a in s.actions for n in (*a.names, a.heldout)}
    return tuple(n for v in _FRESH_VERBS for x in _FRESH_NOUNS if (n := v + x) not in taken)


FRESH_SHARE = 1 / 3  # share of training prompts that list the actions under fresh names


def allowed(st: Step, wording: str, r: random.Random) -> list[tuple[str, str, str]]:
    """(action id, listed name, rule) in the order the prompt lists them. `wording`: "train"
    (usual names mostly, sometimes another training name, shuffled order), "fresh" (training rules
    under names drawn from `fresh_names()`, shuffled; training only) or "reworded" (held-out names
    and rules, an order reversed from the formula's)."""
    if wording == "reworded":
        return [(a.id, a.heldout, a.reworded) for a in reversed(st.actions)]
    acts = list(st.actions)
    r.shuffle(acts)
    if wording == "fresh":
        return [(a.id, n, a.rule) for a, n in zip(acts, r.sample(fresh_names(), len(acts)), strict=True)]
    if wording != "train":
        raise ValueError(f"unknown wording {wording!r}")
    return [(a.id, a.names[0] if r.random() < 0.6 else r.choice(a.names), a.rule) for a in acts]


def answer_format(st: Step) -> str:
    keys = ", ".join(f'"{k}": ' + {"action": '"<one allowed action>"', "preserve": "true|false",
                                  "urgency": '"low|medium|high|critical"'}.get(k, '"..."') for k in st.fields)
    return "Reply with one JSON object: {" + keys + "}"


def prompt_vars(case: dict[str, Any], acts: list[tuple[str, str, str]]) -> dict[str, str]:
    """The four parts of a decision prompt (the suite template joins them the same way)."""
    st = step(case["step"])
    return {"header": _header(st, case), "allowed": "\n".join(f"- {n}: {rule}" for _, n, rule in acts),
            "shell_output": case["evidence"], "answer_format": answer_format(st)}


PROMPT_TEMPLATE = "{{ header }}\nAllowed actions:\n{{ allowed }}\nShell output:\n{{ shell_output }}\n{{ answer_format }}"


def join_prompt(v: dict[str, str]) -> str:
    return f"{v['header']}\nAllowed actions:\n{v['allowed']}\nShell output:\n{v['shell_output']}\n{v['answer_format']}"


def reading(case: dict[str, Any]) -> str:
    """What the deciding evidence says, quoted compactly from the step's own output (the facts the
    formula's rule reads, in the order the tools printed them); "" for a step without one.
    Answers start with it, so the loss rewards reading the evidence before naming a target or an
    action (the decision then follows from text the model has just written)."""
    key, lay = case["step"], stage_mod.LAYOUTS[case["layout"]]
    ev = case["evidence"]
    if key == "witness/survey-workers":
        rows = []
        for name, p in stage_mod.facts_survey_workers(ev, lay)["polecats"].items():
            if p["mr"]:
                rows.append(f"{name} MR open")
            elif not p["open"]:
                rows.append(f"{name} closed")
            else:
                sess = ("agent" if p["agent"] else "no agent") if p["session"] else "no session"
                rows.append(f"{name} {p['bead']} {sess}{'' if p['dir'] else ' no dir'} quiet {p['quiet']}m")
        return "; ".join(rows)
    if key == "witness/process-cleanups":
        f = stage_mod.facts_process_cleanups(ev, lay)
        status = stage_mod.section(ev, "cd polecats/").splitlines()
        head = re.sub(r"^## \S+?\.\.\.\S+ ?", "", status[0]) if status else ""
        return (f"{f['polecat']}: branch {head or 'in sync'}; {len(status) - 1} changed; "
                f"stash {'yes' if f['stash'] else 'empty'}; unpushed {'yes' if f['unpushed'] else 'none'}")
    if key == "witness/inbox-check":
        f = stage_mod.facts_inbox_check(ev, lay)
        words = [w for ws, _, _ in stage_mod.ROUTES for w in ws if w in f["text"]]
        return f"{f['subject'].rstrip(':')} from {f['from']}" + (f": '{words[0]}'" if f["subject"].startswith("HELP") and words else "")
    if key == "refinery/process-branch":
        f = stage_mod.facts_process_branch(ev, lay)
        rebase = "not run" if not f["exists"] else ("CONFLICT" if f["conflict"] else "clean")
        return f"{f['mr']} {f['branch']}: on origin {'yes' if f['exists'] else 'no'}; rebase {rebase}"
    if key == "refinery/handle-failures":
        f = stage_mod.facts_handle_failures(ev, lay)
        runs = [p for p in re.split(r"^\$ ", ev, flags=re.M) if "pytest" in p.split("\n", 1)[0]]
        res = ["failed" if re.search(r"\d+ failed", x) else "passed" for x in runs]
        return (f"{f['polecat']}: branch {res[0] if res else '?'}{' ' + f['test'] if f['test'] else ''}; "
                f"main {', '.join(res[1:]) or '?'}; open bug {f['bug'] or 'none'}")
    if key == "refinery/merge-push":
        shas = re.findall(r"^[0-9a-f]{40}$", stage_mod.section(ev, f"cd {lay.rig}/refinery/rig && git fetch"), flags=re.M)
        return f"main {shas[0][:7] if shas else '?'}, origin/main {shas[1][:7] if len(shas) > 1 else '?'}"
    if key == "deacon/zombie-scan":
        return "; ".join(f"{n} {'session' if p['session'] else 'no session'}, {'work' if p['work'] else 'no work'}, "
                         f"quiet {p.get('quiet', '?')}m" for n, p in stage_mod.facts_zombie_scan(ev, lay)["polecats"].items())
    if key == "deacon/plugin-run":
        f = stage_mod.facts_plugin_run(ev, lay)
        if f["never"]:
            return f"{f['plugin']}: no last-run"
        return f"{f['plugin']}: last-run {'older than' if f['expired'] else 'within'} its cooldown"
    if key == "deacon/orphan-check":
        sessions = set(stage_mod.section(ev, "tmux ls").split())
        rows = stage_mod._tsv(stage_mod.section(ev, "bd list"), "id", "assignee")
        return "; ".join(f"{b['id']} {(b.get('assignee') or '').rsplit('/', 1)[-1]} session "
                         f"{'up' if f'{lay.prefix}-' + (b.get('assignee') or '').rsplit('/', 1)[-1] in sessions else 'gone'}"
                         for b in rows)
    if key == "dog/triage-orphans":
        f = stage_mod.facts_triage_orphans(ev, lay)
        return (f"{f['bead']}: session {'alive' if f['alive'] else 'dead'}; branch {'yes' if f['branch'] else 'none'}; "
                f"commits {'yes' if f['commits'] else 'none'}; notes say {'pushed' if f['claims_pushed'] else 'nothing pushed'}")
    if key == "dog/act":
        f = stage_mod.facts_stuck_agent(ev, lay)
        sess = ", ".join(f"{k} {v}" for k, v in f["sessions"].items()) or "none"
        return (f"sessions: {sess}; hooked without agent: {', '.join(f['down']) or 'none'}"
                + ("; pane: tests running" if f["building"] else ""))
    if key == "dog/cleanup":
        f = stage_mod.facts_stale_db(ev, lay)
        return f"{len(f['orphans'])} orphan databases, max_orphans_for_sql {f['limit']}"
    return ""


def answer(st: Step, label: dict[str, Any], name_of: dict[str, str], read: str = "") -> str:
    """The decision as one JSON object: `evidence` first when the step has a reading, then the
    step's keys in its order (what it read before what it does)."""
    obj: dict[str, Any] = {"evidence": read} if read else {}
    for k in st.fields:
        obj[k] = name_of[label["action"]] if k == "action" else label.get(k, "" if k != "preserve" else False)
    return json.dumps(obj)


def misreading(st: Step, label: dict[str, Any], r: random.Random) -> dict[str, Any]:
    """A coherent wrong decision: another allowed action, with that action's own reason."""
    wrong = r.choice([a for a in st.actions if a.id != label["action"]])
    return dict(label, action=wrong.id, reason=wrong.rule.split(":")[0].split(",")[0][:60],
                **({"preserve": not label["preserve"]} if "preserve" in label else {}))


# ----------------------------------------------------------------------------------- corpus
def sessions(role: str, seed: int = 0, reps: int = 1, prompts_per_case: int = 3, progress: bool = False) -> list[Any]:
    """Training sessions of `role`: every case of the training families, each rendered
    `prompts_per_case` times (the allowed actions in another order and words, a `FRESH_SHARE` of
    them under fresh names), each as a success
    and a coherent misreading that shares its prompt (DPO material)."""
    from gt_ext.corpus.sample_town import SampleSession

    cases = evidence(role, stage_mod.TRAIN_LAYOUTS, reps, seed, progress)
    r = random.Random(f"sessions:{seed}:{role}")
    out = []
    for i, case in enumerate(cases):
        st = step(case["step"])
        lay = stage_mod.LAYOUTS[case["layout"]]
        user = {"witness": f"{lay.rig}/witness", "refinery": f"{lay.rig}/refinery", "deacon": "deacon",
                "dog": f"deacon/dogs/{lay.dogs[0]}"}[role]
        for k in range(prompts_per_case):
            acts = allowed(st, "fresh" if r.random() < FRESH_SHARE else "train", r)
            names = {aid: n for aid, n, _ in acts}
            prompt = join_prompt(prompt_vars(case, acts))
            read = reading(case)
            good = answer(st, case["label"], names, read)
            bad = answer(st, misreading(st, case["label"], r), names, read)
            base = f"patrol-{role}-{seed}-{i:05d}-{k}"
            t = f"2026-03-{2 + i % 27:02d}T{8 + k:02d}:{i % 60:02d}:00+00:00"
            msgs = [{"role": "user", "content": prompt}]
            out.append(SampleSession(role, "patrol", lay.rig if role in ("witness", "refinery") else None, None,
                                     "failure", f"{base}-f", user, t, msgs + [{"role": "assistant", "content": bad}]))
            out.append(SampleSession(role, "patrol", lay.rig if role in ("witness", "refinery") else None, None,
                                     "success", f"{base}-s", user, t, msgs + [{"role": "assistant", "content": good}]))
    return out


# ----------------------------------------------------------------------------------- suites
def suite_tests(role: str, seed: int = 0, reps: int = 2, progress: bool = False) -> list[dict[str, Any]]:
    """promptfoo tests of the held-out families of `role` (layouts c and r)."""
    cases = evidence(role, stage_mod.HELDOUT_LAYOUTS, reps, seed, progress)
    r = random.Random(f"suite:{seed}:{role}")
    tests = []
    for _i, case in enumerate(cases):
        st = step(case["step"])
        acts = allowed(st, "reworded" if case["layout"] == "r" else "train", r)
        names = {aid: n for aid, n, _ in acts}
        lab = case["label"]
        v: dict[str, Any] = prompt_vars(case, acts)
        v.update(step=st.key, family=case["family"], expect=names[lab["action"]], expect_id=lab["action"],
                 allowed_names="|".join(n for _, n, _ in acts), noop=names[st.noop.id] if st.noop else "")
        if lab.get("target"):
            v["target"] = str(lab["target"]).lower()
        if lab.get("preserve") is True:
            v["preserve"] = "true"
        tests.append({"description": f"{case['family']}:{case['situation']}:{case['rep']}",
                      "metadata": {"category": st.id, "family": case["family"]}, "vars": v})
    return tests


SUITE_YAML = """# Patrol decisions of the {role} at the steps of Gas Town's own patrol formulas, on held-out
# scenario families (towns never used for training; family `r` lists the actions reworded and
# reordered). Generated by `gt-ext corpus patrol-suite --role {role}` from evidence staged with the
# real bd, git, tmux and dolt; do not edit by hand.
name: {role}-patrol
role: {role}
system_prompt: role
max_new_tokens: 112
# Only what the tools printed is case-specific: the header, the allowed actions, the answer format
# and the `$ cmd` lines are the step's own text, shared with training by design. Tool output repeats
# its own phrasing (git, pytest, tmux), so a task is refused when more than half of its output
# 8-grams are in the corpus (a copied case shares all of them).
guard_vars: [shell_output]
guard_skip_commands: true
max_overlap: 0.5
patrol_report: true
"""

CONFIG_YAML = """description: {role} patrol decisions (gastown-finetune's own suite, held-out families)
prompts:
  - file://prompt.txt
providers:
  - id: echo   # replaced by the model under test in gt-ext eval
defaultTest:
  options:
    # grade the first balanced {{...}} object of the answer
    transform: |
      const s = String(output); const i = s.indexOf('{{');
      if (i < 0) return s;
      let depth = 0, inStr = false, esc = false;
      for (let j = i; j < s.length; j++) {{
        const c = s[j];
        if (inStr) {{ if (esc) esc = false; else if (c === '\\\\') esc = true; else if (c === '"') inStr = false; continue; }}
        if (c === '"') inStr = true;
        else if (c === '{{') depth++;
        else if (c === '}}' && --depth === 0) return s.slice(i, j + 1);
      }}
      return s.slice(i);
  assert:
    - type: is-json
    - type: javascript
      value: "String(JSON.parse(output).action || '').toLowerCase().trim() === context.vars.expect"
    - type: javascript
      value: "!context.vars.target || String(JSON.parse(output).target || '').toLowerCase().includes(context.vars.target)"
    - type: javascript
      value: "!context.vars.preserve || JSON.parse(output).preserve === true || JSON.parse(output).preserve === 'true'"
tests: file://tests.yaml
"""


def write_suite(role: str, out_dir: Path, seed: int = 0, reps: int = 2, progress: bool = False) -> int:
    """Write the held-out patrol suite of `role` into `out_dir`; returns the number of tests."""
    import yaml

    if role not in ROLES:
        raise GtExtError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    tests = suite_tests(role, seed, reps, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "prompt.txt", PROMPT_TEMPLATE + "\n")
    atomic_write_text(out_dir / "suite.yaml", SUITE_YAML.format(role=role))
    atomic_write_text(out_dir / "promptfooconfig.yaml", CONFIG_YAML.format(role=role))
    atomic_write_text(out_dir / "tests.yaml", f"# {len(tests)} held-out {role} patrol decisions (generated)\n"
                      + yaml.safe_dump(tests, sort_keys=False, allow_unicode=True, width=200))
    return len(tests)
