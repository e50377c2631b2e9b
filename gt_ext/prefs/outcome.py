"""Failure modes measured on an agent's outcome, and the rule that picks the better of two.

Each mode is read from what the agent left behind, never from what it said about itself:

| mode | measured on |
|---|---|
| crash | the agent exited non-zero (not killed by us), or reported an error turn |
| timeout | we killed it at the sling's time limit |
| wrong-branch | its clone ended off its branch, or it committed somewhere else (HEAD's reflog) |
| tests-broken | the test command passed on the base commit and fails on its branch |
| dependency-direction | on its beads branch: a cycle among blocking dependencies, or a bead it closed that still waits on an open bead (the edge points the wrong way) |
| hooks-skipped | a command that skips hooks (`--no-verify`, `-n`, `HUSKY=0`, `BD_NO_HOOKS=1`): the corpus gates' `skip-hooks` |
| convention | the corpus gates' other conventions (pkill, force push, raw tmux, ...), a command the agent's guard refused, the bead closed without a reason, uncommitted work left behind |

`auto_pick` orders two outcomes by these, most severe first (the order of `SEVERITY`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.prefs.record import Comparison, Failure, Outcome

SEVERITY = ("crash", "timeout", "wrong-branch", "tests-broken", "dependency-direction", "hooks-skipped", "convention")
BLOCKING = {"blocks", "parent-child", "conditional-blocks", "waits-for"}


def tool_commands(messages: list[dict[str, str]]) -> list[str]:
    """The Bash commands the assistant ran (tool calls), in order."""
    from gt_ext.corpus.format import parse_tool_calls

    out = []
    for m in messages:
        if m["role"] == "assistant":
            for c in parse_tool_calls(m["content"]):
                cmd = (c.get("input") or {}).get("command")
                if isinstance(cmd, str):
                    out.append(cmd)
    return out


def convention_failures(messages: list[dict[str, str]], workdir: str) -> list[Failure]:
    """hooks-skipped and convention failures in the commands of a transcript."""
    from gt_ext.corpus.gates import violations
    from gt_ext.serve.guard import check

    found = violations(messages)
    out = []
    if "skip-hooks" in found:
        out.append(Failure(mode="hooks-skipped", detail="a command skipped git or bd hooks"))
    rest = [v for v in found if v != "skip-hooks"]
    if rest:
        out.append(Failure(mode="convention", detail="commands break: " + ", ".join(rest)))
    refused = [r for r in (check(c, workdir) for c in tool_commands(messages)) if r]
    if refused:
        out.append(Failure(mode="convention", detail=f"{len(refused)} command(s) refused by the guard: {refused[0]}"))
    return out


def dependency_failures(bead: str, issues: list[dict[str, Any]], deps: list[dict[str, Any]],
                        new_deps: list[dict[str, Any]]) -> list[Failure]:
    """Cycles among blocking dependencies, and closed beads left waiting on open ones (new edges only)."""
    status = {i["id"]: i.get("status") for i in issues}
    edges: dict[str, set[str]] = {}
    for d in deps:
        if d.get("type", "blocks") in BLOCKING:
            edges.setdefault(d["issue_id"], set()).add(d["depends_on_id"])
    out = []
    new_blocking = [d for d in new_deps if d.get("type", "blocks") in BLOCKING]
    for d in new_blocking:
        if _reaches(edges, d["depends_on_id"], d["issue_id"]):
            out.append(Failure(mode="dependency-direction",
                               detail=f"{d['issue_id']} -> {d['depends_on_id']} closes a dependency cycle"))
            break
    for d in new_blocking:
        if status.get(d["issue_id"]) == "closed" and status.get(d["depends_on_id"]) not in (None, "closed"):
            out.append(Failure(mode="dependency-direction",
                               detail=f"closed {d['issue_id']} depends on open {d['depends_on_id']} "
                                      f"(the edge points the wrong way)"))
            break
    return out


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n == goal:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(edges.get(n, ()))
    return False


def state_failures(o: Outcome, pane_tail: str = "") -> list[Failure]:
    """crash, timeout, wrong-branch, tests-broken and the state conventions of one outcome."""
    out = []
    if o.timed_out:
        out.append(Failure(mode="timeout", detail=f"killed after {o.wall_s:.0f} s"))
    elif o.exit_code not in (0, None):
        out.append(Failure(mode="crash", detail=f"agent exited {o.exit_code}: {pane_tail.strip()[-200:]}"))
    elif "\n[error: " in "\n" + pane_tail:
        line = next(ln for ln in pane_tail.splitlines() if ln.startswith("[error: "))
        out.append(Failure(mode="crash", detail=line[:200]))
    if o.head_branch != o.git_branch:
        out.append(Failure(mode="wrong-branch", detail=f"its clone ended on {o.head_branch or 'a detached HEAD or another branch'}, "
                                                       f"not {o.git_branch}"))
    elif o.stray_commits:
        out.append(Failure(mode="wrong-branch", detail=f"{len(o.stray_commits)} commit(s) made off {o.git_branch}"))
    t = o.tests or {}
    if t.get("cmd") and t.get("base_rc") == 0 and t.get("rc") not in (0, None):
        out.append(Failure(mode="tests-broken", detail=f"{t['cmd']!r} passed on the base commit, exits {t['rc']} here"))
    if o.bead and o.bead.get("status") == "closed" and \
            str(o.bead.get("close_reason") or "").strip().lower() in ("", "closed"):
        out.append(Failure(mode="convention", detail="bead closed without a reason"))
    if o.dirty:
        out.append(Failure(mode="convention", detail=f"uncommitted changes left: {', '.join(o.dirty[:5])}"))
    return out


def ordered(failures: list[Failure]) -> list[Failure]:
    """Failures sorted most severe first, one per mode."""
    seen: dict[str, Failure] = {}
    for f in failures:
        seen.setdefault(f.mode, f)
    return sorted(seen.values(), key=lambda f: SEVERITY.index(f.mode) if f.mode in SEVERITY else len(SEVERITY))


@dataclass
class Pick:
    """The rule's verdict: winner and loser labels, the rule that decided, and why."""

    winner: str
    loser: str
    rule: str
    why: str


def _describe(o: Outcome) -> str:
    return f"{o.label} ({o.model}): " + (", ".join(f"{f.mode} ({f.detail})" for f in o.failures) or "no failure")


def _progress(o: Outcome) -> tuple[int, int, int]:
    """Tie-breakers when the failures are alike: bead closed, tests pass, work committed."""
    t = o.tests or {}
    return (int(bool(o.bead) and (o.bead or {}).get("status") == "closed"),
            int(bool(t.get("cmd")) and t.get("rc") == 0), int(bool(o.commits)))


def auto_pick(cmp: Comparison) -> Pick:
    """Pick the better outcome by measured failure modes (see module doc); GtExtError when the
    rules see no difference (the comparison stays undecided: a person picks with --winner)."""
    a, b = cmp.outcomes["a"], cmp.outcomes["b"]

    def key(o: Outcome) -> list[int]:
        return sorted(SEVERITY.index(f.mode) if f.mode in SEVERITY else len(SEVERITY) for f in ordered(o.failures))

    ka, kb = key(a), key(b)
    if len(ka) != len(kb):
        w, lo = (a, b) if len(ka) < len(kb) else (b, a)
        return Pick(w.label, lo.label, "fewer-failure-modes", f"{_describe(w)}; {_describe(lo)}")
    if ka != kb:  # same count: the side whose failures are less severe
        w, lo = (a, b) if ka > kb else (b, a)
        return Pick(w.label, lo.label, "less-severe-failures", f"{_describe(w)}; {_describe(lo)}")
    pa, pb = _progress(a), _progress(b)
    if pa != pb:
        w, lo = (a, b) if pa > pb else (b, a)
        what = ("closed the bead", "tests pass", "committed work")
        gained = next(n for n, x, y in zip(what, _progress(w), _progress(lo), strict=True) if x != y)
        return Pick(w.label, lo.label, "more-progress", f"same failures ({_describe(w)}); only {w.label} {gained}")
    raise GtExtError(f"comparison {cmp.id} is undecided: the rules see no difference ({_describe(a)}; "
                     f"{_describe(b)}); pick with --winner {a.model} or --winner {b.model}")
