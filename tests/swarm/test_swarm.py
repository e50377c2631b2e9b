"""Swarm training end to end on 127.0.0.1: real hivemind peers, tiny LLaMA + LoRA, real averaging.

Each peer is its own process group, reaped by the `peers` fixture whatever happens. Waits are
bounded and fail with the peer's log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from swarm_helpers import TEST_SETS, Peers, adapter, rel_diff, run_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def _val_curve(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}


def _start_first(peers: Peers, tmp: Path, corpus: Path, key: Path, steps: int, **kw) -> list[str]:
    peers.fork("a", corpus, tmp / "a", key, steps, **kw)
    return peers.wait_file(tmp / "a" / "swarm.json", "a", timeout=180)["addrs"]


def test_three_peers_agree_and_val_loss_falls(tmp_path: Path, corpus: Path, swarm_key: Path, peers: Peers):
    steps = 6
    kw = dict(target_batch_size=12, min_peers=3, wait_for_peers_s=240, group_size=3)
    addrs = _start_first(peers, tmp_path, corpus, swarm_key, steps, **kw)
    peers.fork("b", corpus, tmp_path / "b", swarm_key, steps, initial_peers=addrs, **kw)
    # Peer c hits a NaN loss on every 3rd batch: it skips those, nobody else notices.
    peers.fork("c", corpus, tmp_path / "c", swarm_key, steps, initial_peers=addrs, inject_nan_every=3, **kw)
    for name in ("a", "b", "c"):
        assert peers.wait(name, 300) == 0, peers.log(name)[-3000:]

    infos = {n: run_json(tmp_path / n) for n in "abc"}
    for n, info in infos.items():
        assert info["status"] == "done", (n, info["status"])
        assert info["metrics"]["steps"] == steps
        assert info["metrics"]["peers_seen"] == 3
        # The swarm learns: validation loss falls on every peer.
        assert info["metrics"]["val_loss_end"] < info["metrics"]["val_loss_start"] - 0.05, info["metrics"]
    assert infos["c"]["metrics"]["nan_skips"] >= 1
    assert infos["a"]["metrics"]["nan_skips"] == infos["b"]["metrics"]["nan_skips"] == 0
    # Only LoRA went on the wire, and it is a small fraction of full gradients.
    sw = infos["a"]["swarm"]
    assert sw["bytes_per_round_2peers"]["lora"] * 20 < sw["bytes_per_round_2peers"]["full"]
    # After averaging rounds the adapters agree (independent training would drift apart).
    ads = {n: adapter(tmp_path / n) for n in "abc"}
    for n in "bc":
        assert rel_diff(ads["a"], ads[n]) < 0.15, (n, rel_diff(ads["a"], ads[n]))
    # Same layout as a local run, so `gt-ext export` can take it.
    for f in ("run.json", "metrics.jsonl", "loss.png", "adapter/adapter_config.json"):
        assert (tmp_path / "a" / f).is_file(), f
    assert any((tmp_path / "a" / "checkpoints").glob("step-*/adapter/adapter_model.safetensors"))


def _job_bead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real job bead the forked peers report to (GT_EXT_JOB_BEAD), when bd is installed."""
    from gt_ext.gastown.bd import Bd, init_beads
    from gt_ext.gastown.binaries import find_bd
    from gt_ext.gastown.testing import isolated_env
    from gt_ext.jobs.bead import ensure_statuses

    if find_bd(required=False) is None:
        return None
    env = isolated_env(tmp_path / "bdhome")
    bd = Bd(init_beads(tmp_path / "jobs", "job", env=env), env=env)
    ensure_statuses(bd)
    bead = bd.create("swarm job", metadata={"status_history": []})
    for k in ("HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_NOSYSTEM"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("GT_EXT_JOB_BEAD", bead.id)
    monkeypatch.setenv("GT_EXT_JOB_BEADS_DIR", str(bd.beads_dir))
    return bd, bead.id


def test_kill9_peer_others_finish_and_late_peer_catches_up(tmp_path: Path, corpus: Path, swarm_key: Path,
                                                            peers: Peers, monkeypatch: pytest.MonkeyPatch):
    job = _job_bead(tmp_path, monkeypatch)  # the peers mark it syncing, then degraded
    steps = 14
    kw = dict(target_batch_size=12, stale_after_s=6.0, averaging_timeout=20.0, group_size=3)
    addrs = _start_first(peers, tmp_path, corpus, swarm_key, steps, min_peers=3, wait_for_peers_s=240, **kw)
    for name in ("b", "c"):
        peers.fork(name, corpus, tmp_path / name, swarm_key, steps, initial_peers=addrs, min_peers=3,
                   wait_for_peers_s=240, **kw)
    # The late peer loads its model now (slow on a busy machine) but stands by until the swarm
    # is at step 5, after c is gone: it then joins a run in progress.
    peers.fork("late", corpus, tmp_path / "late", swarm_key, steps, initial_peers=addrs, join_at_step=5,
               wait_for_peers_s=400, **kw)
    peers.wait_step(tmp_path / "c", "c", 3, timeout=240)
    peers.kill9("c")
    for name in ("a", "b", "late"):
        assert peers.wait(name, 300) == 0, peers.log(name)[-3000:]

    a, b, late = (run_json(tmp_path / n) for n in ("a", "b", "late"))
    # The survivors finished every step; the lost peer made the run degraded, not failed.
    for info in (a, b):
        assert info["metrics"]["steps"] == steps
        assert info["status"] == "degraded", info["metrics"]
        assert info["metrics"]["lost_peers"] >= 1
    # The late peer downloaded the swarm's state instead of starting from step 0...
    assert late["metrics"]["steps"] == steps
    assert late["metrics"]["catch_ups"] >= 1, late["metrics"]
    first = json.loads((tmp_path / "late" / "metrics.jsonl").read_text().splitlines()[0])["step"]
    assert first >= 3, first
    # ...so its adapter is the swarm's adapter.
    assert rel_diff(adapter(tmp_path / "a"), adapter(tmp_path / "late")) < 0.15
    if job is not None:  # run as a job step: the bead followed the swarm
        bd, bead = job
        issue = bd.show(bead)
        history = [h["status"] for h in issue.metadata["status_history"]]
        assert "syncing" in history and issue.status == "degraded", history
        assert history.index("syncing") < history.index("degraded")


def _single_process_curve(corpus: Path, steps: int, batch: int, eval_steps: list[int]) -> dict[int, float]:
    """Plain local training with the training core's pieces: batch `batch`, no swarm at all."""
    import torch

    from gt_ext.swarm.peer import _val_loss
    from gt_ext.train.config import load_config
    from gt_ext.train.data import BatchLoader, fixed_batches, load_items
    from gt_ext.train.loop import lr_lambda
    from gt_ext.train.lora import load_base_for_training, trainable_parameters
    from gt_ext.train.losses import sft_loss

    cfg = load_config(None, TEST_SETS + [f"max_steps={steps}", f"data.batch_size={batch}"])
    torch.set_num_threads(1)
    model, tok = load_base_for_training(cfg)
    d = cfg.data
    items, _ = load_items(corpus, "sft", "witness", None, "train", tok, d.max_length)
    val, _ = load_items(corpus, "sft", "witness", None, "val", tok, d.max_length)
    val_b = fixed_batches(val, 4, d.pack, d.pack_length, tok.pad_token_id)
    loader = BatchLoader(items, batch, d.pack, d.pack_length, d.seed, tok.pad_token_id)
    params = trainable_parameters(model)
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    curve = {}
    model.train()
    for step in range(1, steps + 1):
        loss = sft_loss(model, loader.next_batch())
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step in eval_steps:
            curve[step] = _val_loss(model, val_b)
    return curve


def test_two_peers_batch_b_equal_one_process_batch_2b(tmp_path: Path, corpus: Path, swarm_key: Path,
                                                       peers: Peers):
    steps, B = 4, 4
    kw = dict(target_batch_size=2 * B, lockstep=True, min_peers=2, wait_for_peers_s=240, group_size=2)
    addrs = _start_first(peers, tmp_path, corpus, swarm_key, steps, shard=(0, 2), **kw)
    peers.fork("b", corpus, tmp_path / "b", swarm_key, steps, initial_peers=addrs, shard=(1, 2), **kw)
    for name in ("a", "b"):
        assert peers.wait(name, 300) == 0, peers.log(name)[-3000:]
    swarm = _val_curve(tmp_path / "a")
    assert sorted(swarm) == [2, 4]
    local = _single_process_curve(corpus, steps, 2 * B, sorted(swarm))
    start = run_json(tmp_path / "a")["metrics"]["val_loss_start"]
    for s in swarm:
        # Same curve within tolerance (the swarm averages two 4-row token means; one process takes
        # the 8-row token mean), while the loss itself moves by much more than the tolerance.
        assert abs(swarm[s] - local[s]) < 0.01, (s, swarm[s], local[s])
    assert start - swarm[4] > 0.1


def test_checkpoint_restart(tmp_path: Path, corpus: Path, swarm_key: Path, peers: Peers):
    """A peer's checkpoint restarts the swarm at its step, with its adapter and optimizer state."""
    peers.fork("first", corpus, tmp_path / "first", swarm_key, 3, target_batch_size=4)
    assert peers.wait("first", 300) == 0, peers.log("first")[-3000:]
    ckpt = tmp_path / "first" / "checkpoints" / "step-3"
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file() and (ckpt / "optimizer.pt").is_file()
    peers.fork("again", corpus, tmp_path / "again", swarm_key, 5, target_batch_size=4, resume=ckpt)
    assert peers.wait("again", 300) == 0, peers.log("again")[-3000:]
    info = run_json(tmp_path / "again")
    assert info["swarm"]["resumed_from"] == 3
    assert info["metrics"]["steps"] == 5
    steps = [json.loads(x)["step"] for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 5]
    # Restarted from the checkpoint's weights, not from a fresh adapter.
    first_end = run_json(tmp_path / "first")["metrics"]["val_loss_end"]
    assert abs(info["metrics"]["val_loss_start"] - first_end) < 1e-6
