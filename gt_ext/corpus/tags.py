"""Tags of an example: role, task and outcome, read from bead fields, actors and content."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from gt_ext.corpus.format import parse_tool_calls
from gt_ext.roles import ROLE_DESCRIPTIONS, ROLES, TASKS

# Actor / role strings as gt writes them: "mayor", "deacon", "gastown/witness",
# "gastown/polecats/nux", "gastown/crew/max", "deacon/dogs/alpha", "boot".
_ROLE_WORDS = {"polecats": "polecat", "polecat": "polecat", "crew": "crew", "witness": "witness",
               "refinery": "refinery", "mayor": "mayor", "deacon": "deacon", "boot": "boot",
               "dogs": "dog", "dog": "dog"}

_FAILURE_RE = re.compile(r"(?i)\b(fail(?:ed|ure)?|abandon(?:ed)?|won'?t ?fix|wontfix|invalid|reject(?:ed)?|"
                         r"revert(?:ed)?|broke|stuck|timed? ?out|gave up|not done|duplicate)\b")
_FAILURE_LABELS = {"failed", "failure", "outcome:failure", "outcome:failed", "abandoned", "wontfix", "rejected"}
_SUCCESS_LABELS = {"success", "outcome:success", "done", "merged"}


@dataclass(kw_only=True)
class Tags:
    """What is known about where an example came from, all optional: THE tag fields, declared here
    once. The corpus store's `StoredExample` extends this class (its columns), ingest takes it,
    bead links keep `LINK_FIELDS` of it."""

    role: str | None = None
    task: str | None = None
    rig: str | None = None
    bead: str | None = None
    session: str | None = None
    user: str | None = None
    time: str | None = None
    outcome: str = "unknown"
    artifact_key: str | None = None
    model: str | None = None  # what wrote the assistant turns: "witness:3" (node0), "claude-opus-4-5"...

    def to_dict(self) -> dict[str, Any]:
        """The tag fields only (also of a subclass instance)."""
        return {f: getattr(self, f) for f in TAG_FIELDS}

    def merged(self, other: dict[str, Any] | None) -> Tags:
        """Fill blanks from `other` (a stored bead link); own values win."""
        if not other:
            return self
        d = self.to_dict()
        for k, v in other.items():
            if k in d and v and (d[k] in (None, "", "unknown")):
                d[k] = v
        return Tags(**d)


TAG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Tags))
# What a bead close tells about a session (the store's `links` table): a subset of the tags.
LINK_FIELDS: tuple[str, ...] = ("bead", "role", "rig", "task", "outcome", "user")


def role_from_actor(actor: str | None) -> str | None:
    """The Gas Town role named by an actor/role string, or None. The most specific part wins
    ("deacon/dogs/alpha" is a dog, "gastown/polecats/nux" a polecat)."""
    if not actor:
        return None
    parts = [p for p in re.split(r"[/\s:]+", actor.lower()) if p]
    for p in reversed(parts):
        if p in _ROLE_WORDS:
            return _ROLE_WORDS[p]
    for p in reversed(parts):  # "hq-deacon", "dm-witness": tmux session names
        for w, r in _ROLE_WORDS.items():
            if p.endswith("-" + w):
                return r
    return None


def rig_from_actor(actor: str | None) -> str | None:
    """``gastown/polecats/nux`` -> ``gastown``; town-level actors have no rig."""
    if not actor or "/" not in actor:
        return None
    first = actor.split("/", 1)[0]
    return None if first in ("mayor", "deacon", "boot", "hq") else first


def outcome_from_issue(issue: dict[str, Any]) -> str:
    """success / failure / unknown from a bead's status, close reason and labels."""
    labels = {str(x).lower() for x in (issue.get("labels") or [])}
    if labels & _FAILURE_LABELS:
        return "failure"
    if labels & _SUCCESS_LABELS:
        return "success"
    reason = str(issue.get("close_reason") or "")
    if issue.get("status") == "closed":
        return "failure" if _FAILURE_RE.search(reason) else "success"
    return "unknown"


# gt logs `session_death` with a reason both for clean exits ("self-clean: done means idle" after
# gt done, "user shutdown" on gt down) and for real failures; only the latter mark a failed attempt.
_FAILED_DEATH_RE = re.compile(r"crash|exit(?:ed)? with (?:exit )?code [1-9]|stuck|hung|killed|zombie|orphan|timed? ?out|died",
                              re.IGNORECASE)


def attempt_outcome(window: list[dict[str, Any]], bead: str) -> str | None:
    """Outcome of ONE session's attempt at `bead`, from the gt events of that session's actor while
    it ran (its `session_start` up to the actor's next one): `done` for the bead = success; a
    `session_death` with a failure reason and no `done` = failure; else None (use the bead's
    outcome). A bead closed "done" after a crashed first attempt thus gives one success and one
    failure, which is what a DPO pair needs."""
    done = died = False
    for e in window:
        p = e.get("payload") if isinstance(e.get("payload"), dict) else {}
        if e.get("type") == "done" and p.get("bead") == bead:
            done = True
        elif e.get("type") == "session_death" and _FAILED_DEATH_RE.search(str(p.get("reason") or "")):
            died = True
    return "success" if done else ("failure" if died else None)


def task_from_issue(issue: dict[str, Any]) -> str | None:
    """Task partition from a bead's labels (``task:patrol`` or a bare task name) and type."""
    for lab in issue.get("labels") or []:
        lab = str(lab).lower()
        name = lab.split(":", 1)[1] if lab.startswith("task:") else lab
        if name in TASKS:
            return name
    itype = str(issue.get("issue_type") or "").lower()
    title = str(issue.get("title") or "").lower()
    if itype in ("epic", "decision", "milestone") or re.search(r"\b(plan|design|roadmap)\b", title):
        return "planning"
    if re.search(r"\b(review|mr|merge request|pull request)\b", title):
        return "code-review"
    if itype in ("molecule", "gate") and re.search(r"patrol", title):
        return "patrol"
    return None


def task_from_content(messages: list[dict[str, str]], role: str | None) -> str:
    """Task partition guessed from what the assistant did (tool calls), then from the role."""
    cmds = " ".join(str(c["input"].get("command", "")) for m in messages if m["role"] == "assistant"
                    for c in parse_tool_calls(m["content"]))
    if re.search(r"\bbd (?:create|new)\b|\bgt convoy create\b", cmds):
        return "bead-creation"
    if re.search(r"\bgit (?:diff|log -p|show)\b|\bgt mq\b|\breview\b", cmds) and role in ("refinery", "crew", "polecat"):
        return "code-review"
    if role in ("deacon", "boot", "witness", "dog"):
        return "patrol"
    if re.search(r"\bgit (?:rebase|merge|push|commit|checkout|branch|pull)\b|\bgt done\b", cmds):
        return "git-workflow"
    if role == "mayor":
        return "planning"
    return "general"


def system_prompt(role: str, rig: str | None = None) -> str:
    """The system turn added to examples of a role that had none (same text at train and serve)."""
    where = f" in rig {rig}" if rig else ""
    return (f"You are the Gas Town {role}{where}: {ROLE_DESCRIPTIONS[role]}. Use gt and bd for town and "
            "bead state; call tools with <tool_call> blocks.")


def check_role_tag(role: str | None) -> str | None:
    """None stays None; a known role passes; anything else maps through actor parsing."""
    if role is None or role in ROLES:
        return role
    return role_from_actor(role)
