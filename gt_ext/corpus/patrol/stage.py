"""Stage patrol situations in a scratch town, record the patrol's own commands, label by the rules.

For every decision step (`steps.STEPS`) there is a `stage_<step>` that sets a situation up with the
real tools (`gt_ext.gastown.scratch.ScratchTown`: bd beads, git repos, tmux sessions, file times,
Dolt databases) and returns the evidence: the commands the step's instructions run and what they
printed. `facts_<step>` reads the facts back out of that evidence (`bd ... --json | jq` rows, `tmux
ls` lines, `git status` headers, pytest summaries, `SHOW DATABASES` rows) and `decide_<step>`
applies the formula's rule to them. So the label is the formula's rule applied to what the tools
printed, never to what the generator meant to stage (a test checks the two agree).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gt_ext.gastown.scratch import ScratchTown


@dataclass(frozen=True)
class Layout:
    """One scenario family's town: its rig, bead prefix and agent names."""

    name: str
    rig: str
    prefix: str
    polecats: tuple[str, ...]
    dogs: tuple[str, ...]
    plugins: tuple[tuple[str, str], ...]  # (plugin, cooldown)
    code: tuple[str, str]  # the rig's module and function (its tests are named after them)


LAYOUTS = {
    "a": Layout("a", "webapp", "wa", ("nux", "slit", "toast", "rictus"), ("alpha", "bravo"),
                (("dolt-backup", "24h"), ("stuck-agent-dog", "5m"), ("git-hygiene", "12h")), ("calc", "total")),
    "b": Layout("b", "datapipe", "dp", ("ace", "capable", "dag", "morsov"), ("charlie", "delta"),
                (("dolt-log-rotate", "1h"), ("tool-updater", "24h"), ("compactor-dog", "30m")), ("stats", "add_all")),
    # More training towns: the names a decision copies (polecats, rig, prefix, plugins) vary over six
    # towns, so the model learns to read them from the evidence instead of memorising two towns' names.
    "d": Layout("d", "gateway", "gw", ("furiosa", "glory", "coma", "fifi"), ("india", "juliet"),
                (("session-gc", "2h"), ("log-trim", "6h"), ("dep-audit", "24h")), ("prices", "net_total")),
    "e": Layout("e", "mobile", "mb", ("warboy", "doof", "organic", "bullet"), ("kilo", "lima"),
                (("cache-warm", "30m"), ("backup-verify", "12h"), ("lint-sweep", "1h")), ("cart", "subtotal")),
    "f": Layout("f", "infra", "ia", ("immortan", "rikki", "giddy", "corpus"), ("mike", "november"),
                (("cert-renew", "24h"), ("disk-check", "15m"), ("branch-prune", "6h")), ("metrics", "sum_values")),
    "g": Layout("g", "search", "sr", ("jedediah", "gutgash", "smeg", "chumbucket"), ("oscar", "papa"),
                (("index-rebuild", "12h"), ("queue-drain", "45m"), ("stale-lock", "2h")), ("terms", "count_all")),
    # Held out: towns never used for training.
    "c": Layout("c", "billing", "bl", ("keeper", "cheedo", "angharad", "splendid"), ("echo", "foxtrot"),
                (("dolt-archive", "6h"), ("rebuild-gt", "1h"), ("gitignore-reconcile", "24h")), ("ledger", "balance")),
    "r": Layout("r", "docsite", "ds", ("dementus", "scrotus", "toecutter", "valkyrie"), ("golf", "hotel"),
                (("dolt-snapshots", "2h"), ("submodule-commit", "12h"), ("quality-review", "30m")), ("pages", "word_count")),
}
TRAIN_LAYOUTS = ("a", "b", "d", "e", "f", "g")
HELDOUT_LAYOUTS = ("c", "r")  # "r" also lists the actions reworded and reordered

# Polecat names for the training towns, drawn afresh for every staged case (`staged_layout`): with
# only the six towns' 24 names a model learns those names and misspells the ones a new town uses
# (`chode` for `cheedo`) when it joins bead, session and log rows per polecat; with a new set each
# case, copying the name from the evidence is the only way to write it. Half are made of syllables,
# half are plain words (held-out towns use both kinds); none is a held-out town's name (a test checks).
_ONSETS = ("b", "br", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p",
           "pr", "r", "s", "sh", "sk", "sl", "sn", "st", "t", "th", "tr", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ee", "oo", "ai", "ou", "ia")
_CODAS = ("", "", "", "n", "r", "s", "k", "x", "sh", "th", "ck", "m", "t", "d", "l", "ng")
_WORDS = ("ember", "ranger", "tinker", "rusty", "cinder", "gauge", "piston", "hazard", "nomad", "drifter",
          "scrap", "bolt", "rivet", "sprocket", "gasket", "diesel", "chrome", "dusty", "grinder", "wrench",
          "spanner", "tumble", "whistle", "lantern", "marble", "thistle", "badger", "falcon", "raven", "otter",
          "juniper", "saffron", "copper", "pewter", "flint", "tallow", "bramble", "hollow", "quarry", "cobble",
          "kestrel", "mongrel", "jackal", "sparrow", "cricket", "beetle", "hornet", "gecko", "mantis", "vulture",
          "ironside", "sandfly", "mudlark", "firefly", "ratchet", "crank", "axle", "fender", "muffler", "throttle",
          "bandit", "rogue", "outlaw", "warden", "pilgrim", "prophet", "tracker", "scout", "runner", "hunter")


def fresh_polecats(r: random.Random, n: int = 4) -> tuple[str, ...]:
    """`n` distinct polecat names no town layout uses (syllables or plain words, 3-10 letters)."""
    taken = {word for lay in LAYOUTS.values()
             for word in (*lay.polecats, *lay.dogs, lay.rig, lay.prefix, *(p for p, _ in lay.plugins), *lay.code)}
    out: list[str] = []
    while len(out) < n:
        if r.random() < 0.5:
            name = r.choice(_WORDS)
        else:
            name = "".join(r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(r.randint(1, 3))) + r.choice(_CODAS)
        if 3 <= len(name) <= 10 and name not in taken and name not in out and not _has_trigger(name):
            out.append(name)
    return tuple(out)


def _has_trigger(name: str) -> bool:
    """A name that holds a word some rule reads in the text (`zoom` holds `oom`, `hung` is one) would
    change the label of the case it is staged in."""
    words = {w for ws, _, _ in ROUTES for w in ws} | {"fail", "error", "dead", "zombie", "orphan", "stale", "done",
                                                     "merge", "pass", "gone", "ahead"}
    return any(w in name for w in words)


def staged_layout(lay: Layout, r: random.Random) -> Layout:
    """The layout one case is staged in: a training town with fresh polecat names (above), a
    held-out town as it is (its suite stays the same cases)."""
    if lay.name in HELDOUT_LAYOUTS:
        return lay
    return replace(lay, polecats=fresh_polecats(r, len(lay.polecats)))

TITLES = ("fix the flaky login test", "add pagination to the orders API", "rename the config loader",
          "cache exchange-rate lookups", "handle empty CSV uploads", "add a health endpoint",
          "remove the dead feature flag", "speed up the nightly export", "validate webhook signatures")


def _minutes(cooldown: str) -> int:
    n, unit = int(cooldown[:-1]), cooldown[-1]
    return n * {"m": 1, "h": 60, "d": 1440}[unit]


def _tsv(text: str, *keys: str) -> list[dict[str, str]]:
    """Rows printed by `jq -r '... | [.a, .b] | @tsv'`, as dicts with `keys`."""
    out = []
    for ln in text.splitlines():
        parts = ln.split("\t")
        if len(parts) == len(keys):
            out.append(dict(zip(keys, parts, strict=True)))
    return out


def section(evidence: str, cmd_start: str) -> str:
    """The output printed under the first `$ <cmd_start>...` line of the evidence."""
    parts = re.split(r"^\$ ", evidence, flags=re.M)
    for p in parts:
        if p.startswith(cmd_start):
            return p.split("\n", 1)[1] if "\n" in p else ""
    return ""


def _hhmm(s: str) -> int:
    h, m = s.strip().split(":")[:2]
    return int(h) * 60 + int(m)


def _ago(now: int, then: int) -> int:
    return (now - then) % 1440


# ====================================================================== witness / survey-workers
def stage_survey_workers(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    names = r.sample(lay.polecats, r.randint(2, 3))
    focal = names[0]
    others = names[1:]
    quiet = {"working": r.randint(0, 4), "recent": r.randint(2, 8), "idle": r.randint(12, 27),
             "hung": r.randint(35, 140)}
    for n in names:
        s = sit if n == focal else r.choice(["working", "working", "done"])
        assignee = f"{lay.rig}/polecats/{n}"
        title = r.choice(TITLES)
        status = {"done": "closed", "pending-mr": "closed"}.get(s, r.choice(["in_progress", "hooked"]))
        t.bead(title, status=status, assignee=assignee)
        if s == "pending-mr":
            t.bead(f"MR: polecat/{n}", type_="merge-request", status="open", assignee=assignee)
        if s != "orphan":
            (t.root / "polecats" / n).mkdir(parents=True, exist_ok=True)
        if s not in ("dead-session", "orphan", "done", "pending-mr"):
            t.session(f"{lay.prefix}-{n}", agent=(s != "agent-exited"))
        elif s == "done" and r.random() < 0.5:
            t.session(f"{lay.prefix}-{n}", agent=True)
        t.touch_ago(f"logs/{lay.prefix}-{n}.log", quiet.get(s, r.randint(40, 200)) if n == focal
                    else quiet.get(s, r.randint(1, 5)))
    del others
    return "\n".join([
        t.show("date -u +%H:%M"),
        t.show("bd list --all --json | jq -r '.[] | [.id, .issue_type, .status, .assignee] | @tsv'"),
        t.show("tmux ls -F '#{session_name} #{pane_current_command}'"),
        t.show("ls polecats/"),
        t.show("ls -l --time-style=+%H:%M logs/ | awk 'NR>1 {print $6, $7}'"),
    ])


def facts_survey_workers(ev: str, lay: Layout) -> dict[str, Any]:
    now = _hhmm(section(ev, "date").strip())
    beads = _tsv(section(ev, "bd list"), "id", "type", "status", "assignee")
    sessions = dict(ln.split()[:2] for ln in section(ev, "tmux ls").splitlines() if len(ln.split()) >= 2
                    and not ln.startswith("no server"))
    dirs = set(section(ev, "ls polecats").split())
    quiet = {}
    for ln in section(ev, "ls -l").splitlines():
        parts = ln.split()
        if len(parts) == 2 and parts[1].endswith(".log"):
            quiet[parts[1][len(lay.prefix) + 1:-4]] = _ago(now, _hhmm(parts[0]))
    pcs: dict[str, dict[str, Any]] = {}
    for b in beads:
        name = (b.get("assignee") or "").rsplit("/", 1)[-1]
        p = pcs.setdefault(name, {"open": False, "mr": False})
        if b.get("type") == "merge-request" and b.get("status") != "closed":
            p["mr"] = True
        elif b.get("type") != "merge-request" and b.get("status") in ("in_progress", "hooked"):
            p["open"], p["bead"] = True, b["id"]
    for name, p in pcs.items():
        sess = sessions.get(f"{lay.prefix}-{name}")
        p.update(session=sess is not None, agent=sess == "claude", dir=name in dirs, quiet=quiet.get(name, 0))
    return {"polecats": pcs}


def decide_survey_workers(f: dict[str, Any]) -> dict[str, Any]:
    for name, p in f["polecats"].items():
        if p["mr"] or not p["open"]:
            continue
        if not p["session"] and not p["dir"]:
            return {"action": "reset-bead", "target": name,
                    "reason": f"{p['bead']} in_progress, no session and no polecat dir: orphan"}
        if not p["session"]:
            return {"action": "restart", "target": name, "reason": f"session gone, {p['bead']} still open"}
        if not p["agent"]:
            return {"action": "restart", "target": name, "reason": f"agent exited, {p['bead']} still open"}
        if p["quiet"] >= 30:
            return {"action": "restart", "target": name, "reason": f"no output for {p['quiet']} min, hung"}
        if p["quiet"] >= 10:
            return {"action": "nudge", "target": name, "reason": f"hooked but quiet {p['quiet']} min"}
    return {"action": "none", "target": "", "reason": "working, done or waiting on an MR"}


# ====================================================================== witness / process-cleanups
def _repo_with_clone(t: ScratchTown, lay: Layout, name: str, branch: str) -> tuple[str, str]:
    """An upstream bare repo and a polecat worktree on `branch` tracking it; returns (remote, clone)."""
    remote, clone = t.remote(f"{lay.rig}-{name}"), f"polecats/{name}"
    if not (t.root / clone).exists():
        t.sh(f"git init -q --bare {remote} && git clone -q {remote} {clone} 2>/dev/null; cd {clone} && "
             f"echo '# {name}' > README.md && git add README.md && git commit -qm 'initial commit' && "
             f"git push -q origin HEAD:main")
    t.sh(f"cd {clone} && git checkout -q -B {branch} && echo 'x = 1' > work.py && git add work.py && "
         f"git commit -qm 'start {branch}' && git push -q -u origin {branch}")
    return remote, clone


def stage_process_cleanups(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    name = r.choice(lay.polecats)
    branch = f"polecat/{name}-{r.randint(100, 999)}"
    remote, clone = _repo_with_clone(t, lay, name, branch)
    wisp = t.bead(f"cleanup: {name}", labels=f"cleanup,polecat:{name}", status="open")
    del wisp
    files = r.sample(["api.py", "models.py", "util.py", "cli.py", "views.py"], r.randint(1, 3))
    if sit == "ahead":
        for i, fn in enumerate(files):
            t.sh(f"cd {clone} && echo 'v = {i}' > {fn} && git add {fn} && git commit -qm 'wip {fn}'")
    elif sit == "dirty":
        for fn in files:
            t.sh(f"cd {clone} && echo 'y = 2' >> {fn}")
        if r.random() < 0.5:
            t.sh(f"cd {clone} && git add {files[0]}")
    elif sit == "stash":
        t.sh(f"cd {clone} && echo 'z = 3' >> work.py && git stash -q")
    elif sit == "gone":
        t.sh(f"cd {clone} && echo 'v = 9' > {files[0]} && git add {files[0]} && git commit -qm 'wip' && "
             f"git push -q origin --delete {branch} && git fetch -q --prune")
    return "\n".join([
        t.show("bd list --label cleanup --status open --json | jq -r '.[] | [.id, .title] | @tsv'"),
        t.show(f"cd {clone} && git status --short --branch", cwd=None),
        t.show(f"cd {clone} && git stash list"),
        t.show(f"cd {clone} && git log --oneline @{{u}}..HEAD 2>&1 | head -5"),
    ])


def facts_process_cleanups(ev: str, lay: Layout) -> dict[str, Any]:
    wisp = (_tsv(section(ev, "bd list"), "id", "title") or [{}])[0]
    status = section(ev, "cd polecats/").splitlines()
    head = status[0] if status else ""
    name = (wisp.get("title") or "").split(":", 1)[-1].strip()
    stash = section(ev, f"cd polecats/{name} && git stash").strip()
    log = section(ev, f"cd polecats/{name} && git log").strip()
    return {"polecat": name, "gone": "[gone]" in head, "ahead": bool(re.search(r"\[ahead \d+", head)),
            "dirty": len(status) > 1, "stash": bool(stash), "unpushed": bool(log) and "fatal" not in log}


def decide_process_cleanups(f: dict[str, Any]) -> dict[str, Any]:
    n = f["polecat"]
    if f["gone"]:
        return {"action": "escalate", "target": n, "preserve": True, "reason": "upstream branch gone, cannot auto-resolve"}
    if f["dirty"] or f["stash"]:
        what = "uncommitted changes" if f["dirty"] else "stashed work"
        return {"action": "commit", "target": n, "preserve": True, "reason": f"{what} in the worktree"}
    if f["ahead"] or f["unpushed"]:
        return {"action": "push", "target": n, "preserve": True, "reason": "commits not pushed yet"}
    return {"action": "close-wisp", "target": n, "preserve": False, "reason": "clean, nothing unpushed"}


# ====================================================================== witness / inbox-check
MAIL = {
    "started": ("POLECAT_STARTED {n}", "Issue: {b}\nSession: {p}-{n}"),
    "done": ("POLECAT_DONE {n}", "Exit: COMPLETED\nIssue: {b}\nMR: {p}-mr{k}\nBranch: polecat/{n}"),
    "merged": ("MERGED {n}", "Branch: polecat/{n}\nIssue: {b}"),
    "handoff": ("HANDOFF witness", "Watching {n} on {b}; nothing else pending."),
    "help-lifecycle": ("HELP: {n} session hung", "My session froze twice on {b}, no progress since; respawn?"),
    "help-timeout": ("HELP: {n} timeout", "Commands on {b} keep hitting a timeout in my session."),
    "help-crash": ("HELP: {n} crash", "The test runner panics with a fatal error on {b}."),
    "help-oom": ("HELP: {n} oom", "Build for {b} gets killed, oom every time."),
    "help-blocked": ("HELP: {n} blocked", "Merge conflict on {b} I cannot resolve; cannot proceed."),
    "help-question": ("HELP: {n} question", "Which approach for {b}: keep the old endpoint or drop it? The bead is ambiguous."),
    "help-design": ("HELP: {n} design", "Design choice on {b}: new table or a column? Unclear to me."),
    "help-security": ("HELP: {n} security", "Found a credential leak, a security vulnerability, in {b}."),
}


# A second training wording per situation, with other trigger words of the same route (never the
# held-out towns' words), so the model learns the routes' vocabulary rather than one sentence each.
MAIL_ALT = {
    "started": ("POLECAT_STARTED {n}", "Hooked {b}; working in session {p}-{n}."),
    "done": ("POLECAT_DONE {n}", "Exit: COMPLETED\nIssue: {b}\nBranch: polecat/{n}\nMR: {p}-mr{k}"),
    "merged": ("MERGED {n}", "Issue: {b} merged by the refinery."),
    "handoff": ("HANDOFF witness", "Handing off: {n} still busy with {b}."),
    "help-lifecycle": ("HELP: {n} no progress", "No progress on {b} for an hour, my session seems hung."),
    "help-timeout": ("HELP: {n} respawn", "Please respawn my session, {b} commands never return."),
    "help-crash": ("HELP: {n} database error", "Every query for {b} fails with a database error."),
    "help-oom": ("HELP: {n} fatal", "The build of {b} dies with a fatal error each time."),
    "help-blocked": ("HELP: {n} stuck", "I am stuck on {b}: it waits on work nobody owns."),
    "help-question": ("HELP: {n} ambiguous", "The acceptance of {b} is ambiguous; what should I build?"),
    "help-design": ("HELP: {n} design choice", "{b} needs a design choice between two schemas."),
    "help-security": ("HELP: {n} data loss", "Risk of data loss in {b}: the cleanup deletes user rows."),
}


# The polecats of held-out towns word their mail differently (same trigger words, new sentences).
MAIL_HELDOUT = {
    "started": ("POLECAT_STARTED {n}", "Picked up {b}; session {p}-{n} is running."),
    "done": ("POLECAT_DONE {n}", "Exit: COMPLETED\nIssue: {b}\nMR: {p}-mr{k}"),
    "merged": ("MERGED {n}", "Issue: {b}\nMerged-At: main"),
    "handoff": ("HANDOFF witness", "Previous witness: {b} still open, {n} on it."),
    "help-lifecycle": ("HELP: {n} zombie", "Looks like a zombie session here, {b} shows no progress."),
    "help-timeout": ("HELP: {n} stalled", "Each run for {b} ends in a timeout; maybe respawn me."),
    "help-crash": ("HELP: {n} failing", "Connection refused from the database every time I start {b}."),
    "help-oom": ("HELP: {n} disk", "Disk full while building {b}."),
    "help-blocked": ("HELP: {n} deadlock", "Deadlock between {b} and another bead; I am blocked."),
    "help-question": ("HELP: {n} unclear", "The spec of {b} is unclear: two readings, which approach do we take?"),
    "help-design": ("HELP: {n} architecture", "{b} needs an architecture call I should not make alone."),
    "help-security": ("HELP: {n} breach", "Possible data corruption in {b} after the migration."),
}


def stage_inbox_check(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    n = r.choice(lay.polecats)
    b = f"{lay.prefix}-{r.choice('abcdefghkmnpqrstuvwxyz')}{r.randint(10, 99)}"
    if lay.name in HELDOUT_LAYOUTS:
        subj, body = MAIL_HELDOUT[sit]
    else:
        subj, body = (MAIL if r.random() < 0.5 else MAIL_ALT)[sit]
    fill = {"n": n, "b": b, "p": lay.prefix, "k": r.randint(10, 99)}
    t.bead(subj.format(**fill), type_="message", assignee=f"{lay.rig}/witness",
           description=body.format(**fill), labels=f"from:{lay.rig}/polecats/{n}")
    return t.show("bd list --type message --status open --json | jq -r '.[] | \"\\(.id) [\\(.labels[0])] \\(.title)\\n\\(.description)\"'")


def facts_inbox_check(ev: str, lay: Layout) -> dict[str, Any]:
    text = section(ev, "bd list")
    first = text.splitlines()[0] if text else ""
    m = re.search(r"from:[^/\]]+/polecats/([\w-]+)\] (\S+)", first)
    return {"from": m.group(1) if m else "", "subject": m.group(2) if m else "", "text": text.lower()}


ROUTES = (  # (keywords, route, urgency) in the formula's order of precedence
    (("security", "vulnerability", "breach", "data corruption", "data loss"), "overseer", "critical"),
    (("crash", "panic", "fatal", "oom", "disk full", "connection refused", "database error"), "deacon", "high"),
    (("blocked", "merge conflict", "deadlock", "stuck", "cannot proceed"), "mayor", "high"),
    (("which approach", "ambiguous", "unclear", "design choice", "architecture"), "deacon", "medium"),
    (("session", "respawn", "zombie", "hung", "timeout", "no progress"), "witness", "medium"),
)


def decide_inbox_check(f: dict[str, Any]) -> dict[str, Any]:
    if not f["subject"].startswith("HELP"):
        return {"action": "archive", "target": "", "urgency": "low", "reason": f"{f['subject']} is protocol mail"}
    for words, route, urgency in ROUTES:
        if any(w in f["text"] for w in words):
            if route == "witness":
                return {"action": "handle", "target": f["from"], "urgency": urgency,
                        "reason": "session problem the witness can fix"}
            return {"action": "escalate", "target": route, "urgency": urgency,
                    "reason": f"{f['from']} needs the {route}"}
    return {"action": "escalate", "target": "deacon", "urgency": "medium", "reason": "general help request"}


# ====================================================================== refinery / process-branch
def _rig_repo(t: ScratchTown, lay: Layout, where: str = "refinery/rig") -> str:
    """An origin bare repo with main, and a clone of it at `<rig>/<where>`; returns the clone path."""
    clone = f"{lay.rig}/{where}"
    tag = lay.rig
    mod, fn = lay.code
    t.sh(f"git clone -q {t.remote(tag)} {clone} 2>/dev/null; "
         f"cd {clone} && printf 'def {fn}(xs):\\n    return sum(xs)\\n' > {mod}.py && "
         f"printf 'from {mod} import {fn}\\n\\ndef test_{fn}():\\n    assert {fn}([1, 2]) == 3\\n' > test_{mod}.py && "
         f"git add . && git commit -qm '{mod}' && git push -q origin HEAD:main")
    return clone


def stage_process_branch(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    n = r.choice(lay.polecats)
    clone = _rig_repo(t, lay)
    branch = f"polecat/{n}/{lay.prefix}-{r.randint(10, 99)}"
    mr = t.bead(f"MR {branch}", type_="merge-request", status="open", assignee=f"{lay.rig}/polecats/{n}")
    t.sh(f"cd {clone} && git checkout -q -b {branch} && "
         f"printf 'def {lay.code[1]}(xs):\\n    return sum(x for x in xs if x)\\n' > {lay.code[0]}.py && git commit -qam 'skip empty' && "
         f"git push -q origin {branch} && git checkout -q main")
    other = "sum(xs, 0)" if sit == "conflict" else None
    if other:
        t.sh(f"cd {clone} && printf 'def {lay.code[1]}(xs):\\n    return {other}\\n' > {lay.code[0]}.py && git commit -qam 'start at 0' && git push -q origin main")
    else:
        t.sh(f"cd {clone} && echo '# notes' > NOTES.md && git add NOTES.md && git commit -qm notes && git push -q origin main")
    if sit == "gone":
        t.sh(f"cd {clone} && git push -q origin --delete {branch}")
    lines = [t.show(f"bd show {mr} --json | jq -r '.[0] | [.id, .title, .status] | @tsv'"),
             t.show(f"cd {clone} && git fetch -q --prune origin && git ls-remote --exit-code origin refs/heads/{branch}; echo exit=$?")]
    if sit != "gone":
        lines.append(t.show(f"cd {clone} && git checkout -q -b temp origin/{branch} && git -c advice.mergeConflict=false rebase origin/main 2>&1 | grep -v '^hint'"))
        t.sh(f"cd {clone} && (git rebase --abort 2>/dev/null; git checkout -q main)", check=False)
    return "\n".join(lines)


def facts_process_branch(ev: str, lay: Layout) -> dict[str, Any]:
    mr = (_tsv(section(ev, "bd show"), "id", "title", "status") or [{}])[0]
    exists = "exit=0" in section(ev, f"cd {lay.rig}/refinery/rig && git fetch")
    rebase = section(ev, f"cd {lay.rig}/refinery/rig && git checkout")
    conflict = "CONFLICT" in rebase or "could not apply" in rebase
    branch = (mr.get("title") or "").split(" ", 1)[-1]
    return {"branch": branch, "exists": exists, "conflict": conflict, "mr": mr.get("id", "")}


def decide_process_branch(f: dict[str, Any]) -> dict[str, Any]:
    who = f["branch"].split("/")[1] if f["branch"].count("/") >= 2 else ""
    if not f["exists"]:
        return {"action": "close-mr", "target": f["mr"], "preserve": False, "reason": "branch no longer exists on origin"}
    if f["conflict"]:
        return {"action": "conflict-task", "target": who, "preserve": True, "reason": "rebase conflicts with main"}
    return {"action": "run-tests", "target": who, "preserve": False, "reason": "rebase succeeded"}


# ====================================================================== refinery / handle-failures
def stage_handle_failures(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    n = r.choice(lay.polecats)
    clone = _rig_repo(t, lay)
    mod, fn = lay.code
    tests = r.choice([f"test_{fn}_empty", f"test_{fn}_zero", f"test_{fn}_none"])
    bug_title = f"Pre-existing failure: {tests}"
    # The target's own state: green, broken, or flaky (fails on one run in two).
    if sit in ("preexisting", "preexisting-known"):
        t.sh(f"cd {clone} && printf '\\ndef {tests}():\\n    assert {fn}([]) == 1\\n' >> test_{mod}.py && "
             f"git commit -qam 'add {tests}' && git push -q origin main")
    elif sit in ("flaky", "flaky-known"):
        t.sh(f"cd {clone} && printf '\\nimport os\\n\\ndef {tests}():\\n    p = \".flip\"\\n    first = not os.path.exists(p)\\n"
             f"    open(p, \"a\").close() if first else os.remove(p)\\n    assert not first\\n' >> test_{mod}.py && "
             f"git commit -qam 'add {tests}' && git push -q origin main")
    if sit.endswith("-known"):
        t.bead(bug_title, type_="bug", status="open", labels="gt:bug")
    branch = f"polecat/{n}/{lay.prefix}-{r.randint(10, 99)}"
    mr = t.bead(f"MR {branch}", type_="merge-request", status="open", assignee=f"{lay.rig}/polecats/{n}")
    body = "return sum(xs) + 1" if sit == "regression" else "return sum(x for x in xs)"
    t.sh(f"cd {clone} && git checkout -q -b temp && printf 'def {fn}(xs):\\n    {body}\\n' > {mod}.py && git commit -qam change")
    run = "python -m pytest -q -p no:cacheprovider 2>&1 | tail -2"
    lines = [t.show(f"bd show {mr} --json | jq -r '.[0] | [.id, .title, .assignee] | @tsv'"),
             t.show(f"cd {clone} && git checkout -q temp && {run}"),
             t.show(f"cd {clone} && git checkout -q main && {run}")]
    if sit.startswith("flaky"):
        lines.append(t.show(f"cd {clone} && {run}"))
    lines.append(t.show(f"bd search {tests.split('_', 1)[1]} --status open --json | jq -r '.[] | [.id, .title] | @tsv'"))
    return "\n".join(lines)


def facts_handle_failures(ev: str, lay: Layout) -> dict[str, Any]:
    runs = [p for p in re.split(r"^\$ ", ev, flags=re.M) if "pytest" in p.split("\n", 1)[0]]
    branch = runs[0] if runs else ""
    target_runs = runs[1:]
    failed = lambda s: bool(re.search(r"\d+ failed", s))  # noqa: E731
    bugs = _tsv(section(ev, "bd search"), "id", "title")
    m = re.search(r"FAILED \S+::(\w+)", branch)
    return {"branch_failed": failed(branch), "target_failed": any(failed(s) for s in target_runs),
            "bug": bugs[0]["id"] if bugs else "", "test": m.group(1) if m else "",
            "polecat": ((_tsv(section(ev, "bd show"), "id", "title", "assignee") or [{}])[0].get("assignee") or "").rsplit("/", 1)[-1]}


def decide_handle_failures(f: dict[str, Any]) -> dict[str, Any]:
    if not f["branch_failed"]:
        return {"action": "merge", "target": "", "preserve": False, "reason": "all tests passed"}
    if not f["target_failed"]:
        return {"action": "fix-needed", "target": f["polecat"], "preserve": True,
                "reason": "fails on the branch, passes on main"}
    if f["bug"]:
        return {"action": "merge", "target": f["bug"], "preserve": False, "reason": f"pre-existing, {f['bug']} open"}
    return {"action": "file-bug", "target": "", "preserve": False, "reason": "fails on main too, no open bug"}


# ====================================================================== refinery / merge-push
def stage_merge_push(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    n = r.choice(lay.polecats)
    clone = _rig_repo(t, lay)
    tag = lay.rig
    if sit == "rejected":
        hook = Path(t.remote(tag)) / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'protected branch: push declined' >&2\nexit 1\n")
        hook.chmod(0o755)
    elif sit == "raced":
        t.sh(f"git clone -q {t.remote(tag)} other-{tag} 2>/dev/null && cd other-{tag} && echo y > y.txt && "
             f"git add y.txt && git commit -qm other && git push -q origin HEAD:main")
    t.sh(f"cd {clone} && git checkout -q -b temp && echo 'ok' > feature.txt && git add feature.txt && "
         f"git commit -qm 'polecat/{n} work' && git checkout -q main && git merge -q --ff-only temp")
    lines = [t.show(f"cd {clone} && git push origin main 2>&1 | grep -v '^hint' | tail -2"),
             t.show(f"cd {clone} && git fetch -q origin && git rev-parse main origin/main")]
    return "\n".join(lines)


def facts_merge_push(ev: str, lay: Layout) -> dict[str, Any]:
    shas = re.findall(r"^[0-9a-f]{40}$", section(ev, f"cd {lay.rig}/refinery/rig && git fetch"), flags=re.M)
    return {"match": len(shas) == 2 and shas[0] == shas[1]}


def decide_merge_push(f: dict[str, Any]) -> dict[str, Any]:
    if f["match"]:
        return {"action": "notify-merged", "reason": "main and origin/main match"}
    return {"action": "retry-push", "reason": "origin/main differs from main"}


# ====================================================================== deacon / zombie-scan
def stage_zombie_scan(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    names = r.sample(lay.polecats, r.randint(2, 3))
    for i, n in enumerate(names):
        s = sit if i == 0 else r.choice(["working", "hooked-dead"])
        assignee = f"{lay.rig}/polecats/{n}"
        if s in ("zombie", "recent"):
            t.bead(r.choice(TITLES), status="closed", assignee=assignee)
        else:
            t.bead(r.choice(TITLES), status=r.choice(["in_progress", "hooked"]), assignee=assignee)
        if s == "working" or s == "alive-idle":
            t.session(f"{lay.prefix}-{n}")
        if s == "alive-idle":
            t.bead(r.choice(TITLES), status="closed", assignee=assignee)
        quiet = {"zombie": r.randint(15, 300), "recent": r.randint(1, 8), "working": r.randint(0, 3)}.get(s, r.randint(5, 90))
        t.touch_ago(f"logs/{lay.prefix}-{n}.log", quiet)
    return "\n".join([
        t.show("date -u +%H:%M"),
        t.show("bd list --all --json | jq -r '.[] | [.id, .status, .assignee] | @tsv'"),
        t.show("tmux ls -F '#{session_name}'"),
        t.show("ls -l --time-style=+%H:%M logs/ | awk 'NR>1 {print $6, $7}'"),
    ])


def facts_zombie_scan(ev: str, lay: Layout) -> dict[str, Any]:
    now = _hhmm(section(ev, "date").strip())
    sessions = set(section(ev, "tmux ls").split())
    pcs: dict[str, dict[str, Any]] = {}
    for b in _tsv(section(ev, "bd list"), "id", "status", "assignee"):
        name = (b.get("assignee") or "").rsplit("/", 1)[-1]
        p = pcs.setdefault(name, {"work": False})
        p["work"] |= b.get("status") in ("in_progress", "hooked")
    for ln in section(ev, "ls -l").splitlines():
        parts = ln.split()
        if len(parts) == 2:
            name = parts[1][len(lay.prefix) + 1:-4]
            if name in pcs:
                pcs[name]["quiet"] = _ago(now, _hhmm(parts[0]))
    for name, p in pcs.items():
        p["session"] = f"{lay.prefix}-{name}" in sessions
    return {"polecats": pcs}


def decide_zombie_scan(f: dict[str, Any]) -> dict[str, Any]:
    for name, p in f["polecats"].items():
        if not p["session"] and not p["work"] and p.get("quiet", 0) > 10:
            return {"action": "file-warrant", "target": name, "reason": f"no session, no work, quiet {p['quiet']} min"}
    return {"action": "none", "target": "", "reason": "no polecat meets every zombie criterion"}


# ====================================================================== deacon / plugin-run
def stage_plugin_run(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    plugin, cooldown = r.choice(lay.plugins)
    mins = _minutes(cooldown)
    d = t.root / "plugins" / plugin
    d.mkdir(parents=True, exist_ok=True)
    (d / "plugin.md").write_text(f'+++\nname = "{plugin}"\nversion = 1\n\n[gate]\ntype = "cooldown"\n'
                                 f'duration = "{cooldown}"\n+++\n\n# {plugin}\n')
    if sit == "closed":
        t.touch_ago(f"plugins/{plugin}/last-run", r.randint(0, max(0, mins - 2)))
    elif sit == "open":
        t.touch_ago(f"plugins/{plugin}/last-run", mins + r.randint(2, 3 * mins))
    return "\n".join([
        t.show(f"sed -n '/\\[gate\\]/,/+++/p' plugins/{plugin}/plugin.md | grep -v '^+++'"),
        t.show(f"ls plugins/{plugin}/"),
        t.show(f"find plugins/{plugin} -name last-run -mmin +{mins}"),
    ])


def facts_plugin_run(ev: str, lay: Layout) -> dict[str, Any]:
    plugin = re.search(r"plugins/([\w-]+)/", ev).group(1)
    listed = section(ev, f"ls plugins/{plugin}").split()
    expired = bool(section(ev, f"find plugins/{plugin}").strip())
    return {"plugin": plugin, "never": "last-run" not in listed, "expired": expired}


def decide_plugin_run(f: dict[str, Any]) -> dict[str, Any]:
    if f["never"]:
        return {"action": "dispatch", "target": f["plugin"], "reason": "never ran: gate open"}
    if f["expired"]:
        return {"action": "dispatch", "target": f["plugin"], "reason": "cooldown passed: gate open"}
    return {"action": "skip", "target": f["plugin"], "reason": "ran within its cooldown"}


# ====================================================================== deacon / orphan-check
def stage_orphan_check(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    names = r.sample(lay.polecats, r.randint(2, 3))
    for i, n in enumerate(names):
        t.bead(r.choice(TITLES), status="in_progress", assignee=f"{lay.rig}/polecats/{n}")
        if not (i == 0 and sit == "orphan"):
            t.session(f"{lay.prefix}-{n}")
    return "\n".join([
        t.show("bd list --status=in_progress --json | jq -r '.[] | [.id, .assignee] | @tsv'"),
        t.show("tmux ls -F '#{session_name}'"),
    ])


def facts_orphan_check(ev: str, lay: Layout) -> dict[str, Any]:
    sessions = set(section(ev, "tmux ls").split())
    dead = [b["id"] for b in _tsv(section(ev, "bd list"), "id", "assignee")
            if f"{lay.prefix}-{(b.get('assignee') or '').rsplit('/', 1)[-1]}" not in sessions]
    return {"dead": dead}


def decide_orphan_check(f: dict[str, Any]) -> dict[str, Any]:
    if f["dead"]:
        return {"action": "dispatch-orphan-scan", "target": f["dead"][0], "reason": "assignee session is dead"}
    return {"action": "none", "target": "", "reason": "every assignee session is alive"}


# ====================================================================== dog / triage-orphans
def stage_triage_orphans(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    n = r.choice(lay.polecats)
    clone = _rig_repo(t, lay, "mayor/rig")
    notes = "pushed 2 commits to the branch" if sit == "lost" else "started"
    bid = t.bead(r.choice(TITLES), status="in_progress", assignee=f"{lay.rig}/polecats/{n}", description=notes)
    branch = f"polecat/{n}-{bid}"
    if sit in ("work", "alive"):
        t.sh(f"cd {clone} && git checkout -q -b {branch} && echo w > w.py && git add w.py && git commit -qm 'wip {bid}' && "
             f"git push -q origin {branch} && git checkout -q main")
    if sit == "alive":
        t.session(f"{lay.prefix}-{n}")
    out = [t.show(f"bd show {bid} --json | jq -r '.[0] | [.id, .status, .assignee, .description] | @tsv'"),
           t.show(f"tmux has-session -t {lay.prefix}-{n} 2>/dev/null && echo ALIVE || echo DEAD"),
           t.show(f"cd {clone} && git branch -r | grep {n} || echo '(no branch)'")]
    if sit in ("work", "alive"):
        out.append(t.show(f"cd {clone} && git log --oneline origin/main..origin/{branch}"))
    return "\n".join(out)


def facts_triage_orphans(ev: str, lay: Layout) -> dict[str, Any]:
    bead = (_tsv(section(ev, "bd show"), "id", "status", "assignee", "description") or [{}])[0]
    alive = "ALIVE" in section(ev, "tmux has-session")
    branch_out = section(ev, f"cd {lay.rig}/mayor/rig && git branch")
    log = section(ev, f"cd {lay.rig}/mayor/rig && git log").strip()
    return {"bead": bead.get("id", ""), "alive": alive, "branch": "(no branch)" not in branch_out and bool(branch_out.strip()),
            "commits": bool(log), "claims_pushed": "pushed" in (bead.get("description") or "")}


def decide_triage_orphans(f: dict[str, Any]) -> dict[str, Any]:
    b = f["bead"]
    if f["alive"]:
        return {"action": "skip", "target": b, "preserve": False, "reason": "assignee session alive"}
    if f["commits"]:
        return {"action": "recover", "target": b, "preserve": True, "reason": "dead session, commits on its branch"}
    if f["claims_pushed"]:
        return {"action": "escalate", "target": b, "preserve": True, "reason": "says pushed, branch missing"}
    return {"action": "reset", "target": b, "preserve": False, "reason": "dead session, no work on a branch"}


# ====================================================================== dog / stuck-agent-dog act
def stage_stuck_agent(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    n = r.choice(lay.polecats)
    sess = f"{lay.prefix}-{n}" if sit != "crew" else f"{lay.prefix}-crew-{n}"
    bead_status = "closed" if sit == "closed" else "hooked"
    owner = f"{lay.rig}/crew/{n}" if sit == "crew" else f"{lay.rig}/polecats/{n}"
    bid = t.bead(r.choice(TITLES), status=bead_status, assignee=owner)
    down = [n]
    if sit == "mass":
        down += r.sample([p for p in lay.polecats if p != n], 2)
        for m in down[1:]:
            t.bead(r.choice(TITLES), status="hooked", assignee=f"{lay.rig}/polecats/{m}")
    if sit in ("zombie", "building", "crew"):
        first = ("python -c \"print('collected 212 items'); print('tests/test_api.py ........ [ 41%]')\"; sleep 100000"
                 if sit == "building" else "true")
        t.session(sess, agent=False, first=first if sit == "building" else "")
    out = [t.show("tmux ls -F '#{session_name} #{pane_current_command}' 2>&1 || true")]
    if sit in ("zombie", "building", "crew"):
        out.append(t.show(f"tmux capture-pane -p -t {sess} | grep -v '^$' | tail -2"))
    out.append(t.show("bd list --all --json | jq -r '.[] | [.id, .status, .assignee] | @tsv'"))
    del bid
    return "\n".join(out)


def facts_stuck_agent(ev: str, lay: Layout) -> dict[str, Any]:
    sessions = {}
    for ln in section(ev, "tmux ls").splitlines():
        parts = ln.split()
        if len(parts) == 2 and parts[0].startswith(lay.prefix + "-"):
            sessions[parts[0]] = parts[1]
    pane = section(ev, "tmux capture-pane")
    beads = _tsv(section(ev, "bd list"), "id", "status", "assignee")
    hooked = [b for b in beads if b.get("status") in ("hooked", "in_progress") and "/polecats/" in (b.get("assignee") or "")]
    down = [b for b in hooked if sessions.get(f"{lay.prefix}-{b['assignee'].rsplit('/', 1)[-1]}") != "claude"]
    return {"sessions": sessions, "building": bool(re.search(r"collected \d+ items|\[\s*\d+%\]", pane)),
            "beads": beads, "down": [b["assignee"].rsplit("/", 1)[-1] for b in down]}


def decide_stuck_agent(f: dict[str, Any]) -> dict[str, Any]:
    crew = [s for s in f["sessions"] if "-crew-" in s]
    if crew and not f["down"]:
        return {"action": "skip", "target": crew[0], "urgency": "low", "reason": "crew session: out of scope"}
    if len(f["down"]) >= 3:
        return {"action": "escalate", "target": "", "urgency": "critical", "reason": f"{len(f['down'])} agents down at once"}
    if not f["down"]:
        name = (f["beads"][0]["assignee"].rsplit("/", 1)[-1]) if f["beads"] else ""
        return {"action": "skip", "target": name, "urgency": "low", "reason": "bead closed: finished normally"}
    n = f["down"][0]
    sess = n
    if not any(s.endswith("-" + n) and "-crew-" not in s for s in f["sessions"]):
        return {"action": "request-restart", "target": sess, "urgency": "high", "reason": "session dead, work hooked"}
    if f["building"]:
        return {"action": "skip", "target": sess, "urgency": "low", "reason": "pane shows tests still running"}
    return {"action": "kill-restart", "target": sess, "urgency": "high", "reason": "session alive, agent process gone"}


# ====================================================================== dog / mol-dog-stale-db cleanup
ORPHAN_PATTERNS = ("testdb_", "beads_t", "beads_pt", "beads_vr", "doctest_", "doctortest_")


def stage_stale_db(t: ScratchTown, lay: Layout, sit: str, r: random.Random) -> str:
    limit = r.choice([2, 3, 4])
    n = {"none": 0, "few": r.randint(1, limit), "many": limit + r.randint(1, 2)}[sit]
    d = t.root / ".dolt-data"
    d.mkdir(exist_ok=True)
    t.sh("rm -rf .dolt-data/* && cd .dolt-data && dolt sql -q 'CREATE DATABASE hq' >/dev/null && "
         f"dolt sql -q 'CREATE DATABASE {lay.rig}' >/dev/null")
    names = [f"{r.choice(ORPHAN_PATTERNS)}{r.randint(1000, 99999)}" for _ in range(n)]
    if names:
        t.sh("cd .dolt-data && dolt sql -q " + _shq("; ".join(f"CREATE DATABASE {x}" for x in names)) + " >/dev/null")
    return f"Config: max_orphans_for_sql = {limit}\n" + t.show("cd .dolt-data && dolt sql -q 'SHOW DATABASES'")


def _shq(s: str) -> str:
    import shlex

    return shlex.quote(s)


def facts_stale_db(ev: str, lay: Layout) -> dict[str, Any]:
    limit = int(re.search(r"max_orphans_for_sql = (\d+)", ev).group(1))
    rows = re.findall(r"^\|\s*(\S+)\s*\|$", ev, flags=re.M)
    orphans = [x for x in rows if x.startswith(ORPHAN_PATTERNS)]
    return {"limit": limit, "orphans": orphans}


def decide_stale_db(f: dict[str, Any]) -> dict[str, Any]:
    k = len(f["orphans"])
    if k == 0:
        return {"action": "none", "reason": "no orphan databases"}
    if k > f["limit"]:
        return {"action": "escalate", "reason": f"{k} orphans > max_orphans_for_sql {f['limit']}"}
    return {"action": "drop", "reason": f"{k} orphans <= max_orphans_for_sql {f['limit']}"}


# ====================================================================== the table
# step key -> (stage, facts, decide, situations). Situations name what is staged; the label is
# decide(facts(evidence)), and a test checks each situation gives its intended action.
SCENARIOS: dict[str, tuple[Any, Any, Any, dict[str, str]]] = {
    "witness/survey-workers": (stage_survey_workers, facts_survey_workers, decide_survey_workers,
                               {"working": "none", "recent": "none", "idle": "nudge", "hung": "restart",
                                "dead-session": "restart", "agent-exited": "restart", "orphan": "reset-bead",
                                "done": "none", "pending-mr": "none"}),
    "witness/process-cleanups": (stage_process_cleanups, facts_process_cleanups, decide_process_cleanups,
                                 {"clean": "close-wisp", "ahead": "push", "dirty": "commit", "stash": "commit",
                                  "gone": "escalate"}),
    "witness/inbox-check": (stage_inbox_check, facts_inbox_check, decide_inbox_check,
                            {"started": "archive", "done": "archive", "merged": "archive", "handoff": "archive",
                             "help-lifecycle": "handle", "help-timeout": "handle", "help-crash": "escalate",
                             "help-oom": "escalate", "help-blocked": "escalate", "help-question": "escalate",
                             "help-design": "escalate", "help-security": "escalate"}),
    "refinery/process-branch": (stage_process_branch, facts_process_branch, decide_process_branch,
                                {"clean": "run-tests", "conflict": "conflict-task", "gone": "close-mr"}),
    "refinery/handle-failures": (stage_handle_failures, facts_handle_failures, decide_handle_failures,
                                 {"pass": "merge", "regression": "fix-needed", "preexisting": "file-bug",
                                  "preexisting-known": "merge", "flaky": "file-bug", "flaky-known": "merge"}),
    "refinery/merge-push": (stage_merge_push, facts_merge_push, decide_merge_push,
                            {"ok": "notify-merged", "rejected": "retry-push", "raced": "retry-push"}),
    "deacon/zombie-scan": (stage_zombie_scan, facts_zombie_scan, decide_zombie_scan,
                           {"zombie": "file-warrant", "recent": "none", "working": "none", "hooked-dead": "none",
                            "alive-idle": "none"}),
    "deacon/plugin-run": (stage_plugin_run, facts_plugin_run, decide_plugin_run,
                          {"open": "dispatch", "never": "dispatch", "closed": "skip"}),
    "deacon/orphan-check": (stage_orphan_check, facts_orphan_check, decide_orphan_check,
                            {"orphan": "dispatch-orphan-scan", "healthy": "none"}),
    "dog/triage-orphans": (stage_triage_orphans, facts_triage_orphans, decide_triage_orphans,
                           {"empty": "reset", "work": "recover", "lost": "escalate", "alive": "skip"}),
    "dog/act": (stage_stuck_agent, facts_stuck_agent, decide_stuck_agent,
                {"crashed": "request-restart", "zombie": "kill-restart", "building": "skip", "crew": "skip",
                 "closed": "skip", "mass": "escalate"}),
    "dog/cleanup": (stage_stale_db, facts_stale_db, decide_stale_db,
                    {"none": "none", "few": "drop", "many": "escalate"}),
}


def label(key: str, evidence: str, lay: Layout) -> dict[str, Any]:
    """The formula's decision for `evidence` at step `key` (facts read from the evidence itself)."""
    _, facts, decide, _ = SCENARIOS[key]
    return decide(facts(evidence, lay))
