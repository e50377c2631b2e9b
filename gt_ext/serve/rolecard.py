"""The short role card a node0 agent starts with, instead of the ~15K-token `gt prime` context.

The fine-tuned model already knows Gas Town's conventions; the card only tells it who and where it
is, how to call tools, and the few rules the guard enforces anyway. `measure()` counts the tokens
of the card and of real `gt prime` output for the same role with the same tokenizer.
"""

from __future__ import annotations

import os
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
    """The system prompt for `env.role`: identity, place, tool format, hard rules.

    Its first line is the system turn every training example of the role carries
    (`gt_ext.corpus.tags.system_prompt`), so the served model starts from what it was trained on;
    the lines after it add what only the live session knows."""
    from gt_ext.corpus.tags import system_prompt

    if env.role in ROLE_DESCRIPTIONS:
        first = system_prompt(env.role, env.rig or None)
    else:
        first = f"You are a Gas Town agent ({env.role}), working in {f'rig {env.rig}' if env.rig else 'the town'}."
    lines = [
        first,
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
    from gt_ext.gastown.prime import gt_prime

    return gt_prime(env.role, env.root or None, env.rig, env.workdir or None, env.actor or None, timeout=timeout)


def measure(env: AgentEnv, tokenizer: Any) -> dict[str, Any]:
    """Token counts of the role card and of `gt prime` (None when gt prime could not run)."""
    card = role_card(env)
    prime = gt_prime_text(env)

    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    return {"role": env.role, "role_card_tokens": count(card),
            "gt_prime_tokens": count(prime) if prime is not None else None,
            "ratio": round(count(prime) / count(card), 1) if prime else None}
