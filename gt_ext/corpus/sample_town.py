"""A generator of a realistic sample town history, deterministic by seed.

Written from the role descriptions in `gt_ext.roles` and Gas Town's vocabulary (rigs, polecats,
beads, hooks, nudges, the merge queue): sessions per role with their beads, tool calls, tool
output and outcomes, successes and failures. A failed session shares its opening (prompt and the
same observations) with a successful one and parts at the decision, so the pair is DPO material.

Witness patrols are the deepest part (many polecat states, each with one right action), so that a
witness adapter trained on this data has a pattern to learn. Nothing here comes from any
evaluation suite; `overlap.check_no_overlap` guards that.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gt_ext.corpus.format import render_tool_call
from gt_ext.gastown.events import append_events

RIGS = {"webapp": "wa", "datapipe": "dp", "docsite": "ds", "billing": "bl"}
POLECATS = ["nux", "slit", "toast", "rictus", "ace", "capable", "dag", "morsov", "keeper", "cheedo"]
CREW = ["max", "joe", "ana"]
DOGS = ["alpha", "bravo", "charlie"]
PLUGINS = ["wisp-gc", "dolt-backup", "stale-branch-sweep", "doctor", "cost-report"]
WORK = [
    ("fix the flaky login test", "bug"), ("add pagination to the orders API", "feature"),
    ("rename the config loader module", "chore"), ("document the retry policy", "task"),
    ("cache the exchange-rate lookups", "feature"), ("handle empty CSV uploads", "bug"),
    ("bump the http client to the patched release", "chore"), ("add a health endpoint", "feature"),
    ("remove the dead feature flag", "chore"), ("speed up the nightly export job", "task"),
    ("validate webhook signatures", "bug"), ("split the settings page into tabs", "feature"),
]


@dataclass
class SampleSession:
    """One generated session: tags and chat messages in the corpus format."""

    role: str
    task: str
    rig: str | None
    bead: str | None
    outcome: str  # success | failure
    session: str
    user: str
    time: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _call(cmd: str) -> str:
    return render_tool_call("Bash", {"command": cmd})


def _a(text: str, *cmds: str) -> dict[str, str]:
    body = text + ("\n" if text and cmds else "") + "\n".join(_call(c) for c in cmds)
    return {"role": "assistant", "content": body}


def _u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _t(text: str) -> dict[str, str]:
    return {"role": "tool", "content": text}


class _Gen:
    def __init__(self, seed: int):
        self.r = random.Random(seed)
        self.t0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
        self.n = 0

    def sid(self) -> str:
        self.n += 1
        return f"sample-{self.r.getrandbits(48):012x}-{self.n:05d}"

    def ts(self) -> str:
        return (self.t0 + timedelta(minutes=7 * self.n + self.r.randint(0, 6))).isoformat(timespec="seconds")

    def bead(self, rig: str | None) -> str:
        prefix = RIGS[rig] if rig else "hq"
        return f"{prefix}-{self.r.choice('abcdefghjkmnpqrstuvwxyz')}{self.r.randint(10, 999)}"

    def pair(self, role, task, rig, bead, user, opening, good, bad):
        """A success and a failure that share `opening` and part at the next assistant turn. The
        failed attempt comes first (it crashed; a second session then finished the bead)."""
        out = []
        if bad is not None:
            out.append(SampleSession(role, task, rig, bead, "failure", self.sid(), user, self.ts(), opening + bad))
        out.append(SampleSession(role, task, rig, bead, "success", self.sid(), user, self.ts(), opening + good))
        return out

    # --- witness: per-rig polecat monitor --------------------------------------------------------
    # Polecat states and the witness's answer to each (from the role: nudge idle ones, escalate
    # stuck ones, clean up zombies and finished sessions, restart a dead session whose bead is open).
    _W_ACTION = {"working": ("wait", "making progress"), "idle": ("nudge", "idle with work on its hook"),
                 "stuck": ("escalate", "no progress and nudges are not helping"),
                 "dead": ("restart", "session gone while its bead is still open"),
                 "finished": ("cleanup", "bead closed but the session lingers")}

    def witness(self, reports: int = 1) -> list[SampleSession]:
        r = self.r
        rig = r.choice(list(RIGS))
        names = r.sample(POLECATS, r.randint(2, 5))
        states = []
        for name in names:
            kind = r.choices(["working", "idle", "stuck", "dead", "finished"], [4, 3, 2, 2, 2])[0]
            states.append(self._w_state(name, self.bead(rig), kind))
        user = f"{rig}/witness"
        prompt = r.choice([f"Patrol {rig}: check on the polecats.", f"Witness patrol for rig {rig}.",
                           f"Run your patrol of {rig} now.", f"Time for a {rig} patrol: who needs help?"])
        listing = json.dumps([{"name": s["name"], "bead": s["bead"],
                               "session": "dead" if s["state"] == "dead" else "alive",
                               "bead_status": "closed" if s["state"] == "finished" else "in_progress",
                               "last_activity_min": s["idle_min"]} for s in states], indent=1)
        opening = [_u(prompt), _a("Listing the rig's polecats first.", f"gt polecat list {rig} --json"), _t(listing)]
        good_steps: list[dict[str, str]] = []
        bad_steps: list[dict[str, str]] = []
        summary: dict[str, list[str]] = {"nudge": [], "escalate": [], "restart": [], "cleanup": [], "wait": []}
        for s in states:
            target = f"{rig}/{s['name']}"
            act = self._W_ACTION[s["state"]][0]
            summary[act].append(s["name"])
            if act == "nudge":
                g = [_a(f"{target} has been quiet {s['idle_min']} minutes with {s['bead']} on its hook: nudging it (GUPP).",
                        f"gt nudge {target} \"You have {s['bead']} on your hook: run it, or say what blocks you.\"")]
                b = _a(f"{target} is idle; killing its session to free the slot.", f"tmux kill-session -t {RIGS[rig]}-{s['name']}")
            elif act == "escalate":
                g = [_a(f"{target} shows no progress for {s['idle_min']} minutes. Peeking before I escalate.", f"gt peek {target}"),
                     _t(f"[{s['name']}] FAILED test_checkout ({s['fails']}x)\n[{s['name']}] retrying the same command..."),
                     _a(f"{target} loops on a failing test: escalating with the bead.",
                        f"gt escalate \"{target} stuck {s['idle_min']}m on {s['bead']}: same failure {s['fails']} times\" --severity medium")]
                b = _a(f"{target} is stuck, I will restart it hard.", f"pkill -f {s['name']}")
            elif act == "restart":
                g = [_a(f"{target}'s session died while {s['bead']} is still open: restarting it so it resumes the hook.",
                        f"gt polecat restart {target}")]
                b = _a(f"{target} looks dead; removing its worktree directly.", f"rm -rf ~/gt/{rig}/polecats/{s['name']}")
            elif act == "cleanup":
                g = [_a(f"{target} finished {s['bead']} but its session lingers: cleaning it up.", f"gt polecat nuke {target}")]
                b = _a(f"{target} is done; nudging it to pick up more work.", f"gt nudge {target} \"keep going\"")
            else:
                continue
            g.append(_t({"nudge": f"nudge delivered to {target}", "escalate": "escalation filed to mayor",
                         "restart": f"{target}: session restarted on its hook",
                         "cleanup": f"{target}: session ended, worktree removed"}[act]))
            good_steps += g
            bad_steps += [b] if not bad_steps else g
        labels = {"nudge": "nudged", "escalate": "escalated", "restart": "restarted", "cleanup": "cleaned up",
                  "wait": "working fine"}
        parts = [f"{labels[k]}: {', '.join(v)}" for k, v in summary.items() if v]
        good_steps.append(_a(f"Patrol of {rig} done. " + "; ".join(parts) + "."))
        bad = bad_steps + [_a(f"Patrol of {rig} done.")] if bad_steps else None
        out = self.pair("witness", "patrol", rig, None, user, opening, good_steps, bad)
        # Single-step decisions in JSON, the shape patrol formulas ask for: one per polecat seen,
        # plus one report where several polecats are listed and at most one needs the witness.
        for s in states:
            out += self._w_decision(rig, user, [s], s)
        for _ in range(reports):
            out += self._w_decision(rig, user, *self._w_mixed_report(rig))
        return out

    # The decision rules, in this generator's own words (from the witness role: GUPP nudges for idle
    # hooked work, escalation when nudging does not help or a human must decide, restart for a dead
    # or hung session on open work, cleanup once the work has landed).
    _W_RULES = {
        "wait": "it is making progress, or it was nudged less than ten minutes back",
        "nudge": "it is alive but idle while a bead sits on its hook",
        "restart": "its session died or hung while its bead is still open",
        "cleanup": "its bead is done (closed, merged or gt done) and a session or worktree lingers",
        "escalate": "it keeps failing, it ignored three or more nudges, or it needs a human to decide",
    }
    _W_REASON = {"working": "making progress", "nudged": "nudged a few minutes ago", "idle": "idle with work hooked",
                 "stuck": "not progressing, needs help", "dead": "session died, bead still open",
                 "hung": "hung on an open bead", "finished": "work landed, session lingers",
                 "all-busy": "everyone is making progress"}
    # The wrong answer of each failed decision: the mistake a lazy or hasty witness makes.
    _W_WRONG = {"nudge": "wait", "escalate": "wait", "cleanup": "nudge", "wait": "escalate", "restart": "wait"}

    def _w_state(self, name: str, bead: str, kind: str) -> dict:
        """A polecat state with the numbers its description needs; `kind` picks the right action."""
        r = self.r
        return {"name": name, "bead": bead, "state": kind, "fails": r.randint(3, 9), "nudges": r.randint(3, 6),
                "idle_min": r.randint(15, 150) if kind in ("idle", "stuck", "hung") else r.randint(1, 6),
                "variant": r.random()}

    def _w_mixed_report(self, rig: str) -> tuple[list[dict], dict | None]:
        """Two to four polecats; all busy, or exactly one that needs an action."""
        r = self.r
        names = r.sample(POLECATS, r.randint(2, 4))
        kinds = ["working"] * len(names)
        odd = None
        if r.random() < 0.8:
            i = r.randrange(len(names))
            kinds[i] = r.choice(["idle", "stuck", "dead", "finished", "hung", "nudged"])
            odd = i
        states = [self._w_state(n, self.bead(rig), k) for n, k in zip(names, kinds, strict=True)]
        return states, (states[odd] if odd is not None else None)

    def _w_describe(self, s: dict) -> str:
        """One line about one polecat, in several phrasings per state."""
        n, b, m = s["name"], s["bead"], s["idle_min"]
        options = {
            "working": [f"{n} on {b}: output {m} min ago, compiling",
                        f"{n} ({b}) printed test progress {m} min ago",
                        f"{n} is editing files for {b}; its last tool call was {m} min ago",
                        f"{n} pushed a commit for {b} {m} min ago and keeps going",
                        f"{n}: long build for {b} still scrolling, newest line {m} min old"],
            "nudged": [f"{n}: quiet on {b} for {m + 20} min, but a nudge went out {m} min ago",
                       f"{n} was nudged about {b} {m} minutes back and has not answered yet"],
            "idle": [f"{n} has {b} hooked, pane quiet for {m} min, no nudge sent yet",
                     f"{n}: {b} hooked and untouched, {m} minutes of silence at the prompt",
                     f"{n} sits at an empty prompt with {b} on its hook ({m} min), agent process alive",
                     f"{n}: {b} still in status hooked after {m} min, the session is up but never started"],
            "stuck": [f"{n} on {b}: {s['fails']} identical test failures over {m} min, no commit since",
                      f"{n} ignored {s['nudges']} nudges about {b}; silent for {m} min",
                      f"{n} keeps asking whether {b} should drop the old endpoint; nobody in the rig can say, {m} min so far",
                      f"{n}: git push for {b} refused {s['fails']} times with an authentication error",
                      f"{n} tried to rebase {b} {s['fails']} times and hits the same conflict each time"],
            "dead": [f"{n}: tmux session gone, {b} still in_progress on its hook",
                     f"{n} crashed {m} min ago; {b} remains hooked and open",
                     f"{n}: agent exited with an error {m} min ago, {b} open, worktree untouched"],
            "hung": [f"{n}: pane frozen for {m} min although the process lives, {b} open, one nudge unanswered",
                     f"{n} stopped redrawing {m} min ago mid-command; {b} in_progress"],
            "finished": [f"{n}: {b} closed and merged, yet its session sits at the prompt",
                         f"{n} ran gt done for {b} {m} min ago but the pane is still open",
                         f"{n}: the refinery landed {b}; worktree and session are still around",
                         f"{n}: hook empty since {b} closed, idle at the prompt for {m} min"],
        }[s["state"]]
        return options[int(s["variant"] * len(options))]

    @staticmethod
    def _w_action(s: dict | None) -> str:
        kind = s["state"] if s else "working"
        return {"working": "wait", "nudged": "wait", "idle": "nudge", "stuck": "escalate", "dead": "restart",
                "hung": "restart", "finished": "cleanup"}[kind]

    def _w_command(self, rig: str, action: str, s: dict | None) -> str:
        """The gt command that carries out `action` (never pkill, rm -rf or raw tmux)."""
        if s is None or action == "wait":
            return ""
        t = f"{rig}/{s['name']}"
        return {"nudge": f"gt nudge {t} \"run your hook\"", "escalate": f"gt escalate \"{t} stuck on {s['bead']}\"",
                "restart": f"gt polecat restart {t}", "cleanup": f"gt polecat nuke {t}"}[action]

    def _w_decision(self, rig: str, user: str, states: list[dict], focus: dict | None) -> list[SampleSession]:
        """One JSON decision (success) and a wrong one (failure) over a report of `states`."""
        r = self.r
        action = self._w_action(focus)
        report = "\n".join(("- " if len(states) > 1 else "") + self._w_describe(s) for s in states)
        with_cmd = r.random() < 0.35
        style = r.randrange(3)
        if style == 0:
            ask = r.choice(["Witness of {rig}: decide the next action.", "You watch rig {rig}. What do you do?",
                            "Patrol step for {rig}. Pick one action."]).format(rig=rig)
            keys = '{"action": wait|nudge|escalate|restart|cleanup, "target", "reason"' + (', "command"' if with_cmd else "") + "}"
            prompt = f"{ask}\nSituation: {report}.\nReply with JSON: {keys}."
        elif style == 1:
            rules = "\n".join(f"  {a}: {why}" for a, why in r.sample(list(self._W_RULES.items()), 5))
            fields = '"action": "<one option>", "target": "<polecat name>", "reason": "<short why>"'
            fields += ', "command": "<the gt command>"' if with_cmd else ""
            prompt = (f"Witness duty on rig {rig}. Options for a polecat:\n{rules}\n"
                      f"Latest report:\n{report}\nAnswer with a single JSON object {{{fields}}}.")
        else:
            prompt = (f"Polecats of {rig} right now:\n{report}\n"
                      "Which one needs the witness, and what should happen? One JSON object with action, "
                      "target (the polecat's name, empty if nobody) and reason"
                      + (", plus the gt command to run" if with_cmd else "") + ".")
        # Short reasons: a patrol formula reads the JSON, and a long reason only costs tokens.
        why = self._W_REASON[focus["state"] if focus else "all-busy"]
        # The witness always answers what it sees (target, reason) before what it does (action),
        # whatever order the request lists the keys in: a small model then picks the action from
        # its own short reading of the report instead of committing to it first.
        answer: dict[str, str] = {"target": focus["name"] if focus else "", "reason": why, "action": action}
        if with_cmd:
            answer["command"] = self._w_command(rig, action, focus)
        # The failed decision misreads the report: a coherent answer for the wrong state, so the
        # pair differs in the decision only (not in a give-away reason or a banned command).
        bad_action = self._W_WRONG[action]
        misread = {"wait": "working", "nudge": "idle", "escalate": "stuck", "restart": "dead", "cleanup": "finished"}
        wrong = dict(answer, action=bad_action, reason=self._W_REASON[misread[bad_action]])
        if with_cmd:
            wrong["command"] = self._w_command(rig, bad_action, focus)
        good = [{"role": "assistant", "content": json.dumps(answer)}]
        bad = [{"role": "assistant", "content": json.dumps(wrong)}]
        return self.pair("witness", "patrol", rig, focus["bead"] if focus else None, user, [_u(prompt)], good, bad)

    # --- deacon / boot / dog -------------------------------------------------------------------
    def deacon(self) -> list[SampleSession]:
        r = self.r
        down = r.choice([None, *RIGS])
        plugin = r.choice(PLUGINS)
        dog = r.choice(DOGS)
        status = {"rigs": {rig: {"witness": "running" if rig != down else "stopped", "refinery": "running"} for rig in RIGS},
                  "due_plugins": [plugin]}
        opening = [_u(r.choice(["Deacon patrol.", "Run the town patrol.", "Patrol cycle: keep the town healthy."])),
                   _a("Checking town status.", "gt status --json"), _t(json.dumps(status, indent=1))]
        good = []
        if down:
            good.append(_a(f"The {down} witness is stopped: starting it through gt.", f"gt witness start {down}"))
            good.append(_t(f"witness {down}: started"))
        good.append(_a(f"Plugin {plugin} is due: dispatching it to dog {dog}.", f"gt dog dispatch {plugin} --dog {dog}"))
        good.append(_t(f"dispatched {plugin} to deacon/dogs/{dog}"))
        good.append(_a("Patrol complete; recording the heartbeat.", "gt deacon heartbeat"))
        bad = [_a("Something may be wrong; restarting every agent session.", "tmux kill-server")]
        return self.pair("deacon", "patrol", None, None, "deacon", opening, good, bad)

    def boot(self) -> list[SampleSession]:
        r = self.r
        age = r.choice([1, 2, 3, 7, 12, 25])
        opening = [_u("Boot check: is the deacon alive?"), _a("Reading the deacon's heartbeat.", "gt deacon status --json"),
                   _t(json.dumps({"session": "hq-deacon", "alive": True, "heartbeat_age_min": age}))]
        if age > 5:
            good = [_a(f"Heartbeat is {age} minutes old (over 5): the deacon is stuck. Restarting it through gt.", "gt deacon restart"),
                    _t("deacon restarted"), _a("Deacon restarted; boot done.")]
            bad = [_a("Deacon process seems fine.")]
        else:
            good = [_a(f"Heartbeat is {age} minutes old: the deacon is healthy. Nothing to do.")]
            bad = [_a("Restarting the deacon to be safe.", "pkill -f deacon")]
        return self.pair("boot", "patrol", None, None, "boot", opening, good, bad)

    def dog(self) -> list[SampleSession]:
        r = self.r
        plugin, dog = r.choice(PLUGINS), r.choice(DOGS)
        n = r.randint(0, 40)
        cmd = {"wisp-gc": "bd wisp gc --older-than 7d", "dolt-backup": "bd dolt push",
               "stale-branch-sweep": "gt prune-branches --dry-run", "doctor": "gt doctor",
               "cost-report": "gt costs --since 24h --json"}[plugin]
        opening = [_u(f"You are dog {dog}. Run plugin {plugin} and report to the deacon."), _a(f"Running {plugin}.", cmd),
                   _t(f"{plugin}: ok ({n} items)")]
        good = [_a(f"{plugin} finished with {n} items. Reporting.",
                   f"gt mail send deacon/ -s \"{plugin} done\" -m \"{plugin} ok, {n} items\""), _t("sent"),
                _a("Reported to the deacon; done.")]
        bad = [_a("Done. Cleaning up leftover processes.", "killall python3")]
        return self.pair("dog", "patrol", None, None, f"deacon/dogs/{dog}", opening, good, bad)

    # --- refinery -------------------------------------------------------------------------------
    def refinery(self) -> list[SampleSession]:
        r = self.r
        rig = r.choice(list(RIGS))
        pc, bead = r.choice(POLECATS), self.bead(rig)
        mr = f"mr-{r.randint(100, 999)}"
        passes = r.random() < 0.6
        opening = [_u(f"Process the {rig} merge queue."), _a("Looking at the queue.", f"gt mq list {rig} --json"),
                   _t(json.dumps([{"id": mr, "branch": f"polecat/{pc}/{bead}", "bead": bead, "author": f"{rig}/{pc}"}])),
                   _a(f"Rebasing {mr} on main and running the tests.", "git fetch origin", f"git rebase origin/main polecat/{pc}/{bead}",
                      "make test"),
                   _t("rebase ok\n" + ("42 passed" if passes else "41 passed, 1 failed: test_orders_page"))]
        if passes:
            good = [_a(f"Tests pass: merging {mr}.", f"gt mq merge {mr}"), _t(f"{mr} merged"),
                    _a(f"{mr} merged; {bead} closes with it.")]
            bad = [_a("Tests pass; pushing straight to main.", "git push --force origin HEAD:main")]
        else:
            good = [_a(f"test_orders_page fails after the rebase: rejecting {mr} and telling {pc}.",
                       f"gt mq reject {mr} --reason \"test_orders_page fails after rebase on main\""), _t("rejected"),
                    _a(f"{mr} rejected with the failing test named; {rig}/{pc} was notified.")]
            bad = [_a("One test fails, merging anyway.", f"gt mq merge {mr} --skip-tests")]
        task = "git-workflow" if passes else "code-review"
        return self.pair("refinery", task, rig, bead, f"{rig}/refinery", opening, good, bad)

    # --- polecat ------------------------------------------------------------------------------
    def polecat(self) -> list[SampleSession]:
        r = self.r
        rig, pc = r.choice(list(RIGS)), r.choice(POLECATS)
        bead = self.bead(rig)
        title, _ = r.choice(WORK)
        opening = [_u("Check your hook and run the work on it."), _a("Reading my hook.", "gt hook"),
                   _t(f"{bead}: {title}\nstatus: hooked"),
                   _a(f"Working {bead}: {title}. Running the tests first to see the baseline.", "make test"),
                   _t("38 passed, 1 failed" if "fix" in title else "39 passed")]
        good = [_a("Made the change; running tests again.", "make test"), _t("39 passed"),
                _a("Tests pass. Committing on my branch and submitting.", f"git commit -am \"{title} ({bead})\"", "gt done"),
                _t(f"pushed polecat/{pc}/{bead}; MR submitted"), _a(f"{bead} submitted to the merge queue.")]
        bad = [_a("Hooks are slow; committing without them and pushing.", f"git commit -am \"{title}\" --no-verify",
                  "git push -f origin HEAD")]
        return self.pair("polecat", "git-workflow", rig, bead, f"{rig}/polecats/{pc}", opening, good, bad)

    # --- crew / mayor -----------------------------------------------------------------------------
    def crew(self) -> list[SampleSession]:
        r = self.r
        rig, who = r.choice(list(RIGS)), r.choice(CREW)
        title, itype = r.choice(WORK)
        opening = [_u(f"File a bead for this: {title}. Priority {r.randint(1, 3)}.")]
        good = [_a("Creating the bead with bd.", f"bd create \"{title}\" --type {itype} --priority 2 --json"),
                _t(json.dumps({"id": self.bead(rig), "title": title, "status": "open"})), _a("Filed.")]
        bad = [_a("Adding it straight to the database.", f"dolt sql -q \"insert into issues(title) values ('{title}')\" --data-dir .beads")]
        return self.pair("crew", "bead-creation", rig, None, f"{rig}/crew/{who}", opening, good, bad)

    def mayor(self) -> list[SampleSession]:
        r = self.r
        rig = r.choice(list(RIGS))
        items = r.sample(WORK, 3)
        epic = self.bead(None)
        opening = [_u(f"Plan this for {rig}: " + "; ".join(t for t, _ in items) + ".")]
        cmds = [f"bd create \"{rig} batch: {items[0][0]} and more\" --type epic --json"]
        cmds += [f"bd create \"{t}\" --type {ty} --parent {epic} --json" for t, ty in items]
        good = [_a("Creating an epic and one bead per item, then a convoy to track them.", *cmds),
                _t("\n".join(json.dumps({"id": self.bead(rig)}) for _ in cmds)),
                _a("Convoy and slinging to the rig.", f"gt convoy create \"{rig} batch\" --epic {epic}", f"gt sling {epic} {rig}"),
                _t("convoy created; slung"), _a("Planned: one epic, three beads, slung to " + rig + ".")]
        # The mayor is town-level: the rig is what it plans for, not where the session ran.
        return self.pair("mayor", "planning", None, epic, "mayor", opening, good, None)


def generate(seed: int = 0, witness: int = 60, per_role: int = 12, reports: int = 1) -> list[SampleSession]:
    """Generate a sample town history: `witness` witness patrols (each giving several sessions, plus
    `reports` single-decision reports over several polecats) and `per_role` sessions for every
    other role. Same seed, same history."""
    g = _Gen(seed)
    out: list[SampleSession] = []
    for _ in range(witness):
        out += g.witness(reports)
    for fn in (g.deacon, g.boot, g.dog, g.refinery, g.polecat, g.crew, g.mayor):
        for _ in range(per_role):
            out += fn()
    return out


def claude_transcript(s: SampleSession, cwd: str) -> list[dict[str, Any]]:
    """Render a sample session as Claude Code transcript entries (what hooks would find on disk)."""
    from gt_ext.corpus.format import parse_tool_calls, strip_tool_calls

    entries, pending = [], []
    for i, m in enumerate(s.messages):
        base = {"sessionId": s.session, "cwd": cwd, "timestamp": s.time, "uuid": f"{s.session}-{i}"}
        if m["role"] == "user":
            entries.append(base | {"type": "user", "message": {"role": "user", "content": m["content"]}})
        elif m["role"] == "assistant":
            blocks: list[dict[str, Any]] = []
            text = strip_tool_calls(m["content"])
            if text:
                blocks.append({"type": "text", "text": text})
            for j, c in enumerate(parse_tool_calls(m["content"])):
                tid = f"toolu_{i}_{j}"
                pending.append(tid)
                blocks.append({"type": "tool_use", "id": tid, "name": c["name"], "input": c["input"]})
            entries.append(base | {"type": "assistant", "message": {"role": "assistant", "content": blocks}})
        elif m["role"] == "tool":
            tid = pending.pop(0) if pending else f"toolu_{i}"
            pending.clear()
            entries.append(base | {"type": "user", "message": {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tid, "content": m["content"]}]}})
    return entries


def write_history(sessions: list[SampleSession], town_root: Path, projects: Path) -> list[dict[str, Any]]:
    """Write sessions as a town would leave them: Claude transcripts under `projects`, and gt's
    `sling`, `session_start`, `done` and `session_death` events in gt's event log (`gastown.events`). Returns the beads (issue dicts) the
    sessions worked, ready to create with bd or to spool as closes."""
    town_root, projects = Path(town_root), Path(projects)
    events, issues = [], {}
    succeeded = {s.bead for s in sessions if s.bead and s.outcome == "success"}
    for s in sessions:
        cwd = str(town_root / s.user)
        d = projects / cwd.replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{s.session}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in claude_transcript(s, cwd)))
        if s.bead and s.bead not in issues:
            # Work reaches an agent by a sling (the event's actor is the slinger, the target works it).
            events.append({"ts": s.time, "source": "gt", "type": "sling", "actor": "mayor",
                           "payload": {"bead": s.bead, "target": s.user}, "visibility": "feed"})
        events.append({"ts": s.time, "source": "gt", "type": "session_start", "actor": s.user,
                       "payload": {"session_id": s.session, "role": s.role, "cwd": cwd}, "visibility": "feed"})
        if s.bead and s.bead not in issues:
            issues[s.bead] = {"id": s.bead, "title": f"{s.task} work for {s.role}", "status": "closed",
                              "issue_type": "task", "assignee": s.user, "labels": [f"task:{s.task}"],
                              "close_reason": "done" if s.bead in succeeded else "failed: abandoned"}
        # How the attempt ended, as gt logs it: `done` for the bead, or a crash of the session.
        if s.bead and s.outcome == "success":
            events.append({"ts": s.time, "source": "gt", "type": "done", "actor": s.user,
                           "payload": {"bead": s.bead, "branch": f"work/{s.bead}"}, "visibility": "feed"})
        elif s.outcome == "failure":
            events.append({"ts": s.time, "source": "gt", "type": "session_death", "actor": s.user,
                           "payload": {"session": f"gt-{s.session[-5:]}", "agent": s.user,
                                       "reason": "crashed with exit code 1", "caller": "witness"},
                           "visibility": "feed"})
    append_events(town_root, events)  # gt's event log: written through the town door
    return list(issues.values())


def ingest_sessions(store, sessions: list[SampleSession]) -> dict[str, int]:  # noqa: ANN001 - Store
    """Store generated sessions directly (provenance source "sample"). Returns counts by status."""
    from gt_ext.corpus.collect import process_lock

    with process_lock(store):  # one writer at a time: a batch left open by a kill is judged here
        return _ingest_locked(store, sessions)


def _ingest_locked(store, sessions: list[SampleSession]) -> dict[str, int]:  # noqa: ANN001 - Store
    from gt_ext.corpus.format import canonical_json, sha256_text
    from gt_ext.corpus.ingest import Ingestor, Source, Tags

    ing = Ingestor(store)
    with store.tx():
        for s in sessions:
            h = sha256_text(canonical_json(s.messages))
            ing.ingest(s.messages, Tags(role=s.role, task=s.task, rig=s.rig, bead=s.bead, session=s.session,
                                        user=s.user, time=s.time, outcome=s.outcome),
                       Source("sample", f"sample:{s.session}", h, group=None))
    ing.finish()
    return {k: len(v) for k, v in ing.total.inserted.items()} | {"duplicates": ing.total.duplicates}
