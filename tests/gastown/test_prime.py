"""The real `gt prime` per role: gt_ext.gastown.prime, and the role card's use of it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gt_ext.gastown import prime
from gt_ext.gastown.prime import gt_prime, prime_targets, stable_text
from gt_ext.gastown.testing import isolated_env

HEADINGS = {"mayor": "# Mayor Context", "deacon": "# Deacon Context", "boot": "# Boot Context", "dog": "# Dog Context",
            "witness": "# Witness Context", "refinery": "# Refinery Context", "polecat": "# Polecat Context",
            "crew": "# Crew Worker Context"}


def test_stable_text_drops_only_the_session_banner() -> None:
    out = ("[GAS TOWN] role:demo/witness pid:24119 session:demo/witness-24119\n# Witness Context\n\n"
           "Run `gt prime` after compaction. pid:12 stays when it is prose.\n")
    assert stable_text(out) == "# Witness Context\n\nRun `gt prime` after compaction. pid:12 stays when it is prose.\n"
    structured = "GAS TOWN role:mayor pid:7 session:abc\n# Mayor Context\n"
    assert stable_text(structured) == "# Mayor Context\n"


def test_prime_targets_per_role_and_rig(tmp_path: Path) -> None:
    root = tmp_path / "town"
    (root / "mayor").mkdir(parents=True)
    (root / "mayor" / "town.json").write_text("{}")
    (root / "mayor" / "rigs.json").write_text(json.dumps({"version": 1, "rigs": {"demo": {}, "web": {}}}))
    for d in ("deacon/dogs/boot", "demo/witness", "demo/refinery/rig", "demo/polecats/nux", "demo/crew",
              "web/refinery"):
        (root / d).mkdir(parents=True)
    got = {(t.role, t.rig): t.workdir.relative_to(root).as_posix() for t in prime_targets(root)}
    assert got == {("mayor", None): "mayor", ("deacon", None): "deacon", ("boot", None): "deacon/dogs/boot",
                   ("dog", None): ".", ("witness", "demo"): "demo/witness", ("refinery", "demo"): "demo/refinery/rig",
                   ("polecat", "demo"): "demo/polecats", ("crew", "demo"): "demo/crew",
                   # a rig missing role folders primes from the town root (gt then reads GT_ROLE alone)
                   ("witness", "web"): ".", ("refinery", "web"): "web/refinery", ("polecat", "web"): ".",
                   ("crew", "web"): "."}


def test_missing_gt_is_none_with_a_reason(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(prime, "find_gt", lambda required=False: None)
    with caplog.at_level(logging.WARNING, logger="gt_ext.gastown.prime"):
        assert gt_prime("witness", rig="demo") is None
    assert "real gt is not installed" in caplog.text


@pytest.mark.integration
def test_outside_a_town_is_none_with_a_reason(gt_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = isolated_env(tmp_path / "home")
    (tmp_path / "nowhere").mkdir()
    with caplog.at_level(logging.WARNING, logger="gt_ext.gastown.prime"):
        assert gt_prime("witness", rig="demo", workdir=tmp_path / "nowhere", env=env) is None
    assert "no output" in caplog.text


@pytest.mark.integration
def test_real_gt_prime_for_every_role(make_town) -> None:  # noqa: ANN001 - fixture factory
    tt = make_town()
    if tt.mode != "gt":
        pytest.skip("town made without the real gt")
    targets = prime_targets(tt.root)
    assert {t.role for t in targets} == set(HEADINGS)
    # gt spawns and hooks a patrol wisp for deacon, witness and refinery when none is active, even
    # with --dry-run (as the agent's own first prime would): their first output says so.
    for t in targets:
        if t.role in ("deacon", "witness", "refinery"):
            assert "No active patrol" in (gt_prime(t.role, tt.root, t.rig, t.workdir, dry_run=True, env=tt.env) or ""), t
    for t in targets:
        out = gt_prime(t.role, tt.root, t.rig, t.workdir, dry_run=True, env=tt.env)
        assert out is not None, t
        text = stable_text(out)
        assert HEADINGS[t.role] in text, (t, text[:300])
        assert "pid:" not in text.splitlines()[0] and "ROLE/LOCATION MISMATCH" not in text, t
        if t.rig:
            assert t.rig in text
        # Unchanged town, same text: the artifact's versions only move when the context does.
        again = gt_prime(t.role, tt.root, t.rig, t.workdir, dry_run=True, env=tt.env)
        assert again is not None and stable_text(again) == text, t


@pytest.mark.integration
def test_role_card_measures_real_gt_prime(make_town, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from gt_ext.serve.rolecard import AgentEnv, gt_prime_text

    tt = make_town()
    if tt.mode != "gt":
        pytest.skip("town made without the real gt")
    for k, v in tt.env.items():
        monkeypatch.setenv(k, v)
    env = AgentEnv(role="witness", rig="demo", actor="demo/witness", root=str(tt.root),
                   workdir=str(tt.root / "demo" / "witness"))
    text = gt_prime_text(env)
    assert text is not None and "# Witness Context" in text and "role:demo/witness" in text
    assert gt_prime_text(AgentEnv(role="witness", rig="demo", workdir=str(tt.root.parent))) is None



def test_role_context_drops_what_describes_the_moment():
    from gt_ext.gastown.prime import role_context

    role = ("# Witness Context\n\n## Startup Protocol: Propulsion\n\nRun the patrol.\n\n"
            "## Town Directives (operator policy — overrides formula where they conflict)\n\nBe brief.\n\n"
            "Your mail address: demo/witness\n")
    idle = role + "\n## 🦉 Witness Patrol Status\n\nStatus: **No active patrol**\n\n---\n\n**STARTUP PROTOCOL**: You are the Witness.\n"
    busy = role + "\n## 🚨 AUTONOMOUS WORK MODE 🚨\n\nWork is on your hook.\n\n## Hooked Work\n\n  Bead ID: hq-wisp-1\n"
    assert role_context(idle) == role_context(busy) == role.rstrip() + "\n"
    assert "Be brief." in role_context(idle) and "Startup Protocol: Propulsion" in role_context(idle)
