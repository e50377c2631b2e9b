"""Pure parts of the registry: refs, the deploy stack, prune planning, backend selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gt_ext.errors import GtExtError
from gt_ext.gastown.dolt import free_port
from gt_ext.registry import Registry, parse_ref
from gt_ext.registry.db import Deployment, ModelRecord
from gt_ext.registry.deploy import replay
from gt_ext.registry.prune import plan


@pytest.mark.parametrize("ref, want", [("witness", ("witness", None)), ("witness:3", ("witness", 3)),
                                       ("witness:v3", ("witness", 3)), ("deacon-patrol:12", ("deacon-patrol", 12))])
def test_parse_ref(ref: str, want: tuple) -> None:
    assert parse_ref(ref) == want


@pytest.mark.parametrize("ref", ["", "a:b", "a:1:2", ":1"])
def test_parse_ref_rejects(ref: str) -> None:
    with pytest.raises(GtExtError, match="bad model reference"):
        parse_ref(ref)


def _dep(i: int, action: str, model: str | None, prev: str | None = None) -> Deployment:
    return Deployment(id=i, action=action, role="deacon", rig="", model=model, before={"model": prev},
                      after={"model": model}, actor="t", time="t")


def test_replay_pushes_and_pops() -> None:
    hist = [_dep(1, "deploy", "a:1"), _dep(2, "deploy", "a:2", "a:1"), _dep(3, "rollback", "a:1", "a:2"),
            _dep(4, "deploy", "a:3", "a:1"), _dep(5, "rollback", "a:1", "a:3"), _dep(6, "rollback", None, "a:1"),
            _dep(7, "rollback", None)]
    assert [d.id for d in replay(hist[:2])] == [1, 2]
    assert [d.id for d in replay(hist[:4])] == [1, 4]
    assert replay(hist) == []


def _rec(name: str, v: int, gate: str | None) -> ModelRecord:
    return ModelRecord(name=name, version=v, role="deacon", base_model="tiny-llama", path=Path(f"/x/{name}/v{v}"),
                       gate=gate)


@given(gates=st.lists(st.sampled_from([None, "pass", "fail"]), min_size=1, max_size=8),
       keep=st.integers(min_value=0, max_value=4), deployed=st.sets(st.integers(min_value=1, max_value=8)))
def test_prune_plan_invariants(gates: list, keep: int, deployed: set) -> None:
    recs = [_rec("m", i + 1, g) for i, g in enumerate(gates)]
    hist = [_dep(i, "deploy", f"m:{v}") for i, v in enumerate(sorted(deployed), start=1)]
    p = plan(recs, hist, keep)
    gone = {r.version for r in p.delete}
    kept = {r.version for r, _why in p.keep}
    assert gone | kept == {r.version for r in recs} and not gone & kept
    newest = sorted((r.version for r in recs), reverse=True)[:keep]
    assert not gone & set(newest)
    assert not gone & deployed
    good = [r.version for r in recs if r.gate == "pass"]
    if good:
        assert max(good) not in gone
    # everything else is deleted
    assert gone == {r.version for r in recs} - set(newest) - deployed - ({max(good)} if good else set())


def test_unreachable_town_dolt_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mayor").mkdir()
    (tmp_path / "mayor" / "town.json").write_text('{"name": "t"}')
    monkeypatch.setenv("GT_DOLT_PORT", str(free_port()))  # nothing listens there
    monkeypatch.delenv("GT_EXT_REGISTRY_BACKEND", raising=False)
    with pytest.raises(GtExtError, match=r"cannot connect.*GT_EXT_REGISTRY_BACKEND=sqlite") as e:
        Registry.open(tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("GT_EXT_REGISTRY_BACKEND", "sqlite")
    with Registry.open(tmp_path) as reg:
        assert reg.store.backend == "sqlite" and reg.root == tmp_path / ".models"
