"""Convention fingerprints: what is hashed, what counts as a change, how changes are summarised,
and bad input reported per item (never a crash)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.errors import ConfigError, GtExtError
from gt_ext.gastown.conventions import read_conventions
from gt_ext.loop.fingerprint import compare, read_fingerprint, take_fingerprint, write_fingerprint
from gt_ext.loop.stale import StaleConfig

CLAUDE = "# Town\n\n## Commits\n\nReference the bead id in every commit.\n"


def file_town(root: Path) -> Path:
    """gt's files for a town with one rig `demo`: docs, settings, a directive, a formula."""
    (root / "mayor").mkdir(parents=True)
    (root / "mayor" / "town.json").write_text(json.dumps({"type": "town", "version": 2, "name": "t"}))
    (root / "mayor" / "rigs.json").write_text(json.dumps({"version": 1, "rigs": {"demo": {"beads": {"prefix": "dm"}}}}))
    (root / "CLAUDE.md").write_text(CLAUDE)
    (root / "AGENTS.md").symlink_to("CLAUDE.md")  # as gt install makes it: one file, two names
    (root / "demo" / "witness").mkdir(parents=True)
    (root / "demo" / "witness" / "AGENTS.md").write_text("# Witness\n\nNudge idle polecats twice, then escalate.\n")
    (root / "settings").mkdir()
    (root / "settings" / "config.json").write_text(json.dumps(
        {"type": "town-settings", "version": 1, "default_agent": "claude", "agents": {}, "role_agents": {}}))
    (root / "directives").mkdir()
    (root / "directives" / "witness.md").write_text("Patrol every 10 minutes.\n")
    (root / "directives" / "refinery.md").write_text("Merge in queue order.\n")
    (root / ".beads" / "formulas").mkdir(parents=True)
    (root / ".beads" / "formulas" / "patrol.formula.toml").write_text('formula = "patrol"\n')
    return root


def test_items_per_kind_and_keys(tmp_path):
    root = file_town(tmp_path / "town")
    items = read_conventions(root, "witness", prime=False)
    assert {k: v.kind for k, v in items.items()} == {
        "demo:demo/witness/AGENTS.md": "doc", "town:.beads/formulas/patrol.formula.toml": "formula",
        "town:CLAUDE.md": "doc", "town:directives/witness.md": "directive", "town:settings/config.json": "settings"}
    assert "town:directives/refinery.md" not in items  # another role's directive is not the witness's


def test_changes_summaries_and_what_is_not_a_change(tmp_path):
    root = file_town(tmp_path / "town")
    fp = take_fingerprint(root, "witness", prime=False)
    write_fingerprint(tmp_path / "run", fp)
    assert read_fingerprint(tmp_path / "run")["digest"] == fp["digest"]
    assert compare(fp, read_conventions(root, "witness", prime=False)).changes == []

    # A deployment writes role_agents and agents["node0-*"]: not a convention change.
    s = json.loads((root / "settings" / "config.json").read_text())
    s["role_agents"]["witness"] = "node0-witness"
    s["agents"]["node0-witness"] = {"command": "node0-inference"}
    (root / "settings" / "config.json").write_text(json.dumps(s))
    (root / "CLAUDE.md").write_text(CLAUDE + "\n## Lint\n\nRun make lint before gt done.\n")
    (root / ".beads" / "formulas" / "patrol.formula.toml").unlink()
    (root / "demo" / "witness" / "AGENTS.md").write_bytes(b"# Witness\n\xff\xfe broken\n")
    (root / "demo" / "crew").mkdir()
    (root / "demo" / "crew" / "CLAUDE.md").write_text("# Crew\n")
    diff = compare(fp, read_conventions(root, "witness", prime=False))
    got = {c.key: (c.change, c.summary) for c in diff.changes}
    assert got == {
        "town:CLAUDE.md": ("changed", "+4 -0 lines: «## Lint», «Run make lint before gt done.»"),
        "town:.beads/formulas/patrol.formula.toml": ("removed", "gone from the town"),
        "demo:demo/witness/AGENTS.md": ("unreadable", "not UTF-8 (byte 10)"),
        "demo:demo/crew/CLAUDE.md": ("added", "new, 1 lines"),
    }
    assert [c.key for c in diff.unreadable] == ["demo:demo/witness/AGENTS.md"]
    assert diff.same == 2  # settings (deployment keys ignored) and the directive

    # A secret on an added line is never shown in a summary.
    (root / "CLAUDE.md").write_text(CLAUDE + "export GITHUB_TOKEN=ghp_" + "A1b2" * 9 + "\n")
    [c] = [c for c in compare(fp, read_conventions(root, "witness", prime=False)).changes if c.key == "town:CLAUDE.md"]
    assert "ghp_" not in c.summary and c.summary.startswith("+1 -0 lines")


def test_unreadable_at_training_time_is_recorded_not_fatal(tmp_path):
    root = file_town(tmp_path / "town")
    (root / "settings" / "config.json").write_text("{not json")
    fp = take_fingerprint(root, "witness", prime=False)
    assert fp["items"]["town:settings/config.json"]["error"].startswith("not valid JSON")
    (root / "settings" / "config.json").write_text("{}")
    [c] = compare(fp, read_conventions(root, "witness", prime=False)).changes
    assert (c.key, c.change) == ("town:settings/config.json", "changed") and c.summary.startswith("readable again")


def test_bad_fingerprint_file_and_config(tmp_path):
    (tmp_path / "conventions.json").write_text("[1, 2]")
    with pytest.raises(GtExtError, match="not a convention fingerprint"):
        read_fingerprint(tmp_path)
    assert read_fingerprint(tmp_path / "nothing") is None
    assert StaleConfig.from_settings({"cooldown_hours": 2, "weights": {"formula": 1}}).weights["formula"] == 1.0
    with pytest.raises(ConfigError, match="unknown key 'cooldown'"):
        StaleConfig.from_settings({"cooldown": 2})
    with pytest.raises(ConfigError, match="expected a number"):
        StaleConfig.from_settings({"loss_ratio": "high"})
