"""The short role card a node0 agent starts with, instead of the ~15K-token `gt prime` context.

The fine-tuned model already knows Gas Town's conventions; the card only tells it who and where it
is, how to call tools, and the few rules the guard enforces anyway. `measure()` counts the tokens
of the card and of real `gt prime` output for the same role with the same tokenizer.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Any

from gt_ext.roles import ROLE_DESCRIPTIONS


@dataclass
class AgentEnv:
    """What gt tells an agent through its environment."""

    role: str = "crew"
    rig: str = ""
    actor: str = ""
    root: str = ""
    session: str = ""
    workdir: str = ""

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None, workdir: str | None = None) -> AgentEnv:
        """Read GT_ROLE, GT_RIG, BD_ACTOR, GT_ROOT (or GT_TOWN_ROOT), GT_SESSION."""
        e = os.environ if environ is None else environ
        role = (e.get("GT_ROLE") or "crew").strip()
        # gt sets compound roles for some agents ("<rig>/witness"); the last part is the role.
        role = role.rsplit("/", 1)[-1]
        return cls(role=role, rig=e.get("GT_RIG", ""), actor=e.get("BD_ACTOR", ""),
                   root=e.get("GT_ROOT") or e.get("GT_TOWN_ROOT", ""), session=e.get("GT_SESSION", ""),
                   workdir=workdir or os.getcwd())

    def to_meta(self) -> dict[str, Any]:
        """The fields written into transcripts."""
        return {"role": self.role, "rig": self.rig, "actor": self.actor, "town": self.root, "session": self.session}


def role_card(env: AgentEnv) -> str:
    """The system prompt for `env.role`: identity, place, tool format, hard rules."""
    what = ROLE_DESCRIPTIONS.get(env.role, "a Gas Town agent")
    where = f"rig {env.rig}" if env.rig else "the town"
    lines = [
        f"You are the Gas Town {env.role} ({what}), working in {where}.",
        f"Actor: {env.actor or env.role}. Town root: {env.root or '?'}. Work dir: {env.workdir}.",
        "Act through the shell: gt (town), bd (beads: issues, --json), git, the rig's tests.",
        'To run a command write exactly one block: <tool_call>{"name": "Bash", "input": {"command": "..."}}'
        "</tool_call> and wait for its output. Without a tool call your turn ends.",
        "Rules: work on the bead on your hook first (gt hook); never pkill/killall; never force-push;"
        " never delete outside your work dir; file a bead for work you cannot finish; be brief.",
    ]
    return "\n".join(lines)


def gt_prime_text(env: AgentEnv, timeout: float = 60.0) -> str | None:
    """Real `gt prime` output for this role and work dir, or None when gt or a town is missing."""
    from gt_ext.gastown.binaries import find_gt

    gt = find_gt(required=False)
    if gt is None:
        return None
    e = dict(os.environ, GT_ROLE=env.role, GT_RIG=env.rig, BD_ACTOR=env.actor or env.role)
    if env.root:
        e["GT_ROOT"] = env.root
    try:
        out = subprocess.run([gt, "prime"], cwd=env.workdir or None, env=e, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 and out.stdout.strip() else None


def measure(env: AgentEnv, tokenizer: Any) -> dict[str, Any]:
    """Token counts of the role card and of `gt prime` (None when gt prime could not run)."""
    card = role_card(env)
    prime = gt_prime_text(env)

    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    return {"role": env.role, "role_card_tokens": count(card),
            "gt_prime_tokens": count(prime) if prime is not None else None,
            "ratio": round(count(prime) / count(card), 1) if prime else None}
