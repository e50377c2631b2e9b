"""An agent session as gt knows it: its session id, its start in gt's event log, its bead.

gt v1.0.1 learns a session id from its runtime's SessionStart hook, `gt prime --hook`, which reads
`GT_SESSION_ID` (or the variable named by `GT_SESSION_ID_ENV`, or Claude's stdin JSON), writes it
to `<work dir>/.runtime/session_id` and logs a `session_start` event (actor, session id, work dir)
to `<town>/.events.jsonl`. Non-Claude runtimes are told to do exactly that themselves
("export GT_SESSION_ID=... GT_HOOK_SOURCE=startup && gt prime --hook"), and the node0 agent does:

    sid = session_id_from_env(os.environ) or str(uuid.uuid4())
    register_session(sid, town_root, workdir)      # gt logs session_start for it

so bead closes find node0 sessions through the same events as Claude's.

gt's startup beacon (the first prompt it types) names the work: `[GAS TOWN] <recipient> <- <sender>
• <time> • <topic>[:<mol or bead id>]`; `bead_from_beacon` reads that id.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping

from gt_ext.gastown.binaries import find_gt

log = logging.getLogger(__name__)

SESSION_ID_VAR = "GT_SESSION_ID"
SESSION_ID_ENV_VAR = "GT_SESSION_ID_ENV"  # names the runtime's own session id variable
# gt's beacon: "[GAS TOWN] witness (rig: demo) <- deacon • 2026-01-02T03:04 • assigned:dm-abc12"
_BEACON = re.compile(r"\[GAS TOWN\][^\n•]*•[^\n•]*•\s*(?P<topic>[^\s•]+)")
_BEAD_ID = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9][a-z0-9.-]*$", re.IGNORECASE)


def session_id_from_env(environ: Mapping[str, str]) -> str | None:
    """The session id gt gave this process: `GT_SESSION_ID`, else the variable `GT_SESSION_ID_ENV`
    names (the RuntimeConfig's `session.session_id_env`); None when gt gave none."""
    sid = (environ.get(SESSION_ID_VAR) or "").strip()
    if sid:
        return sid
    var = (environ.get(SESSION_ID_ENV_VAR) or "").strip()
    if var and (environ.get(var) or "").strip():
        return environ[var].strip()
    return None


def register_session(session_id: str, town_root: str | os.PathLike, workdir: str | os.PathLike,
                     env: Mapping[str, str] | None = None, timeout: float = 60.0) -> bool:
    """Run gt's SessionStart hook for a non-Claude runtime: `gt prime --hook` with
    `GT_SESSION_ID=session_id GT_HOOK_SOURCE=startup`, in `workdir`. gt then logs `session_start`
    and persists `.runtime/session_id`. Its output (the role context) is discarded. False (reason
    logged) when gt is missing or fails: the session still has its transcript and stop event."""
    gt = find_gt(required=False)
    if gt is None:
        log.info("session %s not registered with gt: the real gt is not installed", session_id)
        return False
    e = dict(os.environ if env is None else env)
    e.update({SESSION_ID_VAR: session_id, "GT_HOOK_SOURCE": "startup", "GT_ROOT": str(town_root)})
    try:
        res = subprocess.run([gt, "prime", "--hook"], cwd=str(workdir), env=e, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("gt prime --hook for session %s: %s", session_id, type(err).__name__)
        return False
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or "").splitlines() if ln.strip()]
        log.warning("gt prime --hook for session %s exited %d: %s", session_id, res.returncode,
                    lines[-1][:200] if lines else "(no message)")
        return False
    return True


def bead_from_beacon(text: str) -> str | None:
    """The bead or molecule id in gt's startup beacon (`... • assigned:dm-abc12`), else None."""
    m = _BEACON.search(text or "")
    if not m:
        return None
    topic = m.group("topic")
    if ":" not in topic:  # a bare topic word: cold-start, handoff, patrol, ready...
        return None
    cand = topic.split(":", 1)[1]
    return cand if _BEAD_ID.match(cand) else None


__all__ = ["bead_from_beacon", "register_session", "session_id_from_env"]
