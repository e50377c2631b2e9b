"""The real `gt prime`: the role context gt gives an agent at session start.

`gt_prime()` runs the REAL gt (`gastown.gt.Gt`, never our shim) for one role, the way gt's own
session launch does: `GT_ROLE`, `GT_RIG`, `BD_ACTOR` and `GT_ROOT` in the environment and the
role's work dir (or the town root, where gt infers no role and takes `GT_ROLE`) as the current
folder. It returns gt's stdout, or None with the reason logged (gt missing, not a town, timeout,
non-zero exit, empty output).

`dry_run=True` passes `--dry-run`: gt then skips everything with side effects (identity lock,
handoff-marker removal, `bd prime`, mail injection, session events). Use it to READ a role's
context in a live town without disturbing the agent that holds that role. Even so, gt v1.0.1
spawns and hooks a patrol wisp for deacon, witness and refinery when none is active (it runs
`bd mol wisp create` and `bd update --status=hooked`). `read_only=True` sets bd's own read-only
mode (`BD_READONLY=true`, inherited by every bd that gt runs): bd refuses every write, so the
town's beads stay exactly as they were, and `stable_text` drops the failed-spawn lines this leaves
in the output (what remains says "No active patrol", which is true).

`prime_targets()` lists one (role, rig, work dir) per role of a town; `stable_text()` drops the
per-process session banner (`[GAS TOWN] role:... pid:N session:...`) so that two runs of an
unchanged town give the same text.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gt_ext.gastown.binaries import find_gt
from gt_ext.gastown.gt import Gt, GtError
from gt_ext.gastown.town import Town

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
# gt prints this banner for seance discovery; its pid and session id change on every run.
_SESSION_BANNER = re.compile(r"^\[?GAS TOWN\]? role:\S* pid:\d+ session:\S*[ \t]*\n?", re.MULTILINE)
# What a read-only prime prints where gt would have spawned a patrol wisp (gt's patrol_helpers):
# the attempt, bd's refusal, and gt's troubleshooting hint.
_READONLY_SPAWN = re.compile(r"^(Status: \*\*No active patrol\*\*) - creating \S+\.\.\.[ \t]*\n"
                             r"(?:.*\n)*?Run `gt formula list` to troubleshoot\.[ \t]*\n", re.MULTILINE)


@dataclass(frozen=True)
class PrimeTarget:
    """One role of a town to prime: the role, its rig (None for town-level roles), its work dir."""

    role: str
    rig: str | None
    workdir: Path


def gt_prime(role: str, town_root: str | os.PathLike | None = None, rig: str | None = None,
             workdir: str | os.PathLike | None = None, actor: str | None = None, *, dry_run: bool = False,
             read_only: bool = False, timeout: float = DEFAULT_TIMEOUT_S,
             env: Mapping[str, str] | None = None) -> str | None:
    """Real `gt prime` output for `role` (and `rig`) in a town, or None (reason logged).

    `workdir` is the current folder gt runs in (default: `town_root`, else this process's own);
    `actor` becomes `BD_ACTOR` (default: the role); `env` replaces os.environ as the base
    environment (a test town's isolated one)."""
    if find_gt(required=False) is None:
        log.warning("gt prime %s: the real gt is not installed", role)
        return None
    e = dict(os.environ if env is None else env)
    e.update(GT_ROLE=role, GT_RIG=rig or "", BD_ACTOR=actor or role)
    if read_only:
        e["BD_READONLY"] = "true"  # bd refuses every write (gt's patrol-wisp spawn included)
    if town_root:
        e["GT_ROOT"] = str(town_root)
    gt = Gt(town_root, env=e, timeout=timeout)
    cwd = workdir or town_root or None
    what = f"gt prime {role}{' in rig ' + rig if rig else ''}"
    try:
        res = gt.run("prime", *(["--dry-run"] if dry_run else []), check=False, cwd=cwd)
    except GtError as err:  # timed out
        log.warning("%s: %s", what, err.gt_message)
        return None
    except OSError as err:
        log.warning("%s: could not run %s in %s: %s", what, gt.bin, cwd, err.strerror or err)
        return None
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        log.warning("%s: exited %d: %s", what, res.returncode, lines[-1] if lines else "(no message)")
        return None
    if not res.stdout.strip():
        log.warning("%s: no output (%s is not inside a Gas Town?)", what, cwd or os.getcwd())
        return None
    return res.stdout


def stable_text(output: str) -> str:
    """`gt prime` output without the per-run session banner (pid, session id) and without the lines
    a read-only prime leaves where gt tried to spawn a patrol wisp."""
    text = _SESSION_BANNER.sub("", output)
    text = _READONLY_SPAWN.sub(lambda m: m.group(1) + "\n" if "read-only" in m.group(0) else m.group(0), text)
    return text.strip("\n") + "\n"


# Where `gt prime` stops describing the role and starts describing the moment (gt v1.0.1,
# internal/cmd/prime*.go): hooked work, its formula, the current step, a handoff or checkpoint,
# patrol status, pending escalations, the startup protocol. What follows the first of these
# changes as work comes and goes.
_MOMENT = re.compile(r"^(?:## (?:🚨 AUTONOMOUS WORK MODE|Hooked Work|🧬 ATTACHED FORMULA|RALPH LOOP MODE|"
                     r"🚨 PENDING ESCALATIONS|🎬 CURRENT STEP|🤝 Handoff from Previous Session|"
                     r"📌 Previous Session Checkpoint|.*Patrol Status)|\*\*STARTUP PROTOCOL\*\*)", re.MULTILINE)


def role_context(output: str) -> str:
    """The part of `gt prime` output that describes the role (its template, the town's and rig's
    directives, its context file), without the parts about the moment (`_MOMENT`): what a role
    model is trained on, stable while work comes and goes."""
    m = _MOMENT.search(output)
    head = output[: m.start()] if m else output
    return head.rstrip().removesuffix("---").rstrip() + "\n"


def prime_targets(town_root: str | os.PathLike) -> list[PrimeTarget]:
    """One target per role of a town: mayor, deacon, boot and dog at town level, and witness,
    refinery, polecat and crew per rig, each with the work dir gt gives that role.

    Polecats, crew and dogs get no name (their shared parent folder, or the town root where gt
    reads the role from GT_ROLE alone), so their context does not change as workers come and go."""
    town = Town(Path(town_root))
    root = town.root

    def first(*cands: Path) -> Path:
        return next((c for c in cands if c.is_dir()), root)

    out = [PrimeTarget("mayor", None, first(root / "mayor")),
           PrimeTarget("deacon", None, first(root / "deacon")),
           PrimeTarget("boot", None, first(root / "deacon" / "dogs" / "boot")),
           PrimeTarget("dog", None, root)]
    for rig in town.rigs():
        r = root / rig.name
        out += [PrimeTarget("witness", rig.name, first(r / "witness")),
                PrimeTarget("refinery", rig.name, first(r / "refinery" / "rig", r / "refinery")),
                PrimeTarget("polecat", rig.name, first(r / "polecats")),
                PrimeTarget("crew", rig.name, first(r / "crew"))]
    return out


__all__ = ["PrimeTarget", "gt_prime", "prime_targets", "role_context", "stable_text"]
