"""8 processes deploying and rolling back at once leave consistent history and valid settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gt_ext.registry import Registry

WORKERS = 8
OPS = 4

# Each worker: OPS random deploys/rollbacks of deacon or boot in the town settings; prints how
# many succeeded. "nothing to roll back" is an expected refusal, anything else fails the worker.
WORKER = r"""
import json, random, sys
from gt_ext.errors import GtExtError
from gt_ext.registry import Registry
rnd = random.Random(int(sys.argv[1]))
done = 0
with Registry.open() as reg:
    for _ in range(int(sys.argv[2])):
        role = rnd.choice(["deacon", "boot"])
        try:
            if rnd.random() < 0.6:
                ref = rnd.choice(["deacon:1", "deacon:2"]) if role == "deacon" else "boot:1"
                reg.deploy(ref, reason=f"worker {sys.argv[1]}")
            else:
                reg.rollback(role)
            done += 1
        except GtExtError as e:
            if "nothing to roll back" not in str(e):
                raise
print(json.dumps({"done": done}))
"""


def _state(settings: dict, role: str) -> dict:
    return {"role_agent": settings.get("role_agents", {}).get(role),
            "agent_config": settings.get("agents", {}).get(f"node0-{role}")}


def test_parallel_deploy_and_rollback(registry: Registry, make_export, town_dir: Path,
                                      original_town_settings: dict, passed) -> None:
    for role in ("deacon", "deacon", "boot"):
        passed(registry, registry.register(make_export(role)).ref)
    env = dict(os.environ)  # carries GT_TOWN_ROOT and the backend selection from the fixtures
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(OPS)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(WORKERS)]
    done = 0
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        done += json.loads(out.strip().splitlines()[-1])["done"]

    path = town_dir / "settings" / "config.json"
    settings = json.loads(path.read_text())  # a valid file
    json.loads((path.with_name("config.json.bak")).read_text())
    for key in ("cli_theme", "x_unknown", "default_agent", "type", "version"):
        assert settings[key] == original_town_settings[key]
    assert settings["agents"]["opus-46"] == original_town_settings["agents"]["opus-46"]
    assert settings["role_agents"]["refinery"] == "opus-46"

    history = registry.history()
    assert len(history) == done > 0
    assert [h.id for h in history] == sorted({h.id for h in history})
    for role in ("deacon", "boot"):
        entries = [h for h in history if h.role == role]
        # Serialized writers: each entry starts from exactly where the previous one left off.
        prev = _state(original_town_settings, role)
        for h in entries:
            assert {k: h.before[k] for k in prev} == prev, f"history entry #{h.id} did not start from #{h.id - 1}'s result"
            prev = {k: h.after[k] for k in prev}
        assert _state(settings, role) == prev
