"""Builders for small towns used by the RAG tests: gt's file layout, real bd beads, known content."""

from __future__ import annotations

import json
from pathlib import Path

FORMULA = '''formula = "patrol-witness"
description = "The witness patrol loop over a rig's polecats"
type = "workflow"
version = 1

[vars.rig]
description = "rig to patrol"
required = true

[[steps]]
id = "survey"
title = "Survey polecats"
description = "List every polecat session of the rig with gt polecat list and read each one's hook bead."

[[steps]]
id = "nudge-idle"
title = "Nudge idle polecats"
needs = ["survey"]
description = "A polecat idle for more than 10 minutes with work on its hook gets a nudge reminding it of GUPP."

[[steps]]
id = "escalate"
title = "Escalate stuck polecats"
needs = ["nudge-idle"]
description = "A polecat that ignored two nudges is escalated to the mayor with gt mail send."
'''

TOWN_CLAUDE = """# Gas Town HQ

Shared conventions for every agent in this town.

## Commits

Write commit messages in the imperative mood and reference the bead id, like `fix: retry push (dm-12)`.

## Escalation

When blocked for more than an hour, mail the mayor with `gt mail send mayor/` and mark the bead blocked.
"""

WITNESS_CLAUDE = """# Witness of rig demo

## Zombie cleanup

A polecat whose tmux session died but whose worktree still exists is a zombie: run `gt polecat nuke`
after checking that its branch was pushed.
"""

DIRECTIVE = """# Refinery directive

## Merge order

Merge requests are merged strictly in queue order; a failing test sends the MR back to its polecat.
"""


def write_town_files(root: Path, rig: str = "demo", prefix: str = "dm") -> Path:
    """gt's files for a town with one rig (no beads): town.json, rigs.json, settings, docs."""
    (root / "mayor").mkdir(parents=True, exist_ok=True)
    (root / "mayor" / "town.json").write_text(json.dumps({"type": "town", "version": 2, "name": "testtown"}))
    (root / "mayor" / "rigs.json").write_text(json.dumps(
        {"version": 1, "rigs": {rig: {"git_url": "file:///dev/null", "beads": {"prefix": prefix}}}}))
    (root / "settings").mkdir(exist_ok=True)
    (root / "settings" / "config.json").write_text(json.dumps({
        "type": "town-settings", "version": 1, "default_agent": "claude",
        "agents": {"node0-witness": {"command": "node0-inference", "args": ["--role", "witness"]}},
        "role_agents": {"witness": "node0-witness", "deacon": "claude"}}))
    (root / rig / "settings").mkdir(parents=True, exist_ok=True)
    (root / rig / "settings" / "config.json").write_text(json.dumps(
        {"type": "rig-settings", "version": 1, "merge_queue": {"enabled": True, "run_tests": True}}))
    (root / "CLAUDE.md").write_text(TOWN_CLAUDE)
    (root / rig / "witness").mkdir(parents=True, exist_ok=True)
    (root / rig / "witness" / "CLAUDE.md").write_text(WITNESS_CLAUDE)
    (root / "directives").mkdir(exist_ok=True)
    (root / "directives" / "refinery.md").write_text(DIRECTIVE)
    return root


def write_formula(beads_dir: Path) -> Path:
    """The patrol-witness formula in `<beads>/formulas/`."""
    (beads_dir / "formulas").mkdir(exist_ok=True)
    p = beads_dir / "formulas" / "patrol-witness.formula.toml"
    p.write_text(FORMULA)
    return p


# (title, description, labels) of the sample rig's beads.
BEADS = [
    ("Flaky integration test in payments service", "The payments integration test times out on CI roughly one run in five; needs a retry budget or a fixed seed.", ["bug"]),
    ("Upgrade Postgres driver to v5", "Move the rig from pgx v4 to v5 and adapt the connection pool configuration.", ["deps"]),
    ("Add dark mode to the settings page", "Users want a dark theme toggle in the web settings page, persisted per account.", ["frontend"]),
    ("Rate limiter drops webhook retries", "Incoming GitHub webhook retries get throttled by the API rate limiter and are lost.", ["bug"]),
    ("Document the release checklist", "Write down the steps for cutting a release: tag, changelog, artifacts, announcement.", ["docs"]),
    ("Polecat furiosa idle for 40 minutes", "Polecat furiosa has work on its hook but printed nothing for forty minutes.", ["role:witness"]),
    ("Memory leak in the image resize worker", "Resident memory of the image resize worker grows by 200 MB an hour under load.", ["bug"]),
    ("Translate onboarding emails to Spanish", "Localise the three onboarding emails for Spanish-speaking customers.", ["i18n"]),
]
TOWN_BEADS = [
    ("Convoy: Q3 reliability push", "Tracks the reliability work across rigs: flaky tests, memory leaks, dropped webhooks.", []),
    ("Rotate the deploy SSH key", "The deploy key of the town is older than 90 days and must be rotated.", ["ops"]),
]

# Query set: (prompt, role, the source that must be in the top 5). "bead:demo:N" is the N-th of
# BEADS, "bead:*:N" the N-th of TOWN_BEADS (replaced by real ids once bd has made them).
QUERIES = [
    ("which test keeps timing out on CI?", "polecat", "bead:demo:0"),
    ("database driver upgrade", "polecat", "bead:demo:1"),
    ("dark theme for the UI", "crew", "bead:demo:2"),
    ("webhooks are being lost because of throttling", "polecat", "bead:demo:3"),
    ("how do we cut a release", "crew", "bead:demo:4"),
    ("a polecat has been silent for a long time", "witness", "bead:demo:5"),
    ("worker process memory keeps growing", "polecat", "bead:demo:6"),
    ("emails in Spanish", "crew", "bead:demo:7"),
    ("rotate ssh credentials for deployment", "mayor", "bead:*:1"),
    ("what is the reliability convoy tracking?", "mayor", "bead:*:0"),
    ("how should I write commit messages?", "polecat", "file:CLAUDE.md"),
    ("what do I do with a zombie polecat whose session died?", "witness", "file:demo/witness/CLAUDE.md"),
    ("what happens after a polecat ignores two nudges?", "witness", "file:demo/mayor/rig/.beads/formulas/patrol-witness.formula.toml"),
    ("in which order are merge requests merged?", "refinery", "file:directives/refinery.md"),
    ("which agent runs the witness role?", "mayor", "file:settings/config.json"),
]


def build_beads_town(root: Path, env: dict[str, str]) -> dict[str, str]:
    """A town with real bd beads (town `hq`, rig `demo` prefix `dm`), files and a formula.

    Returns {"bead:demo:N" / "bead:*:N": real source key} for the query set.
    """
    from gt_ext.gastown.bd import Bd, init_beads

    write_town_files(root)
    # The rig first: bd init refuses a folder below one that already has beads.
    rig_beads = init_beads(root / "demo" / "mayor" / "rig", "dm", env=env)
    town_beads = init_beads(root, "hq", env=env)
    write_formula(rig_beads)
    names: dict[str, str] = {}
    for beads, items, rig in ((rig_beads, BEADS, "demo"), (town_beads, TOWN_BEADS, "*")):
        bd = Bd(beads, env=env)
        for n, (title, desc, labels) in enumerate(items):
            issue = bd.create(title, description=desc, labels=labels or None, priority=n % 4)
            names[f"bead:{rig}:{n}"] = f"bead:{rig}:{issue.id}"
    return names
