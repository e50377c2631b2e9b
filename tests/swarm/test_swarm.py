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


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _val_curve(run: Path) -> dict[int, float]:
    """Validation loss by global step, after training started (step 0 is the starting point)."""
    return {r["step"]: r["val_loss"] for r in _rows(run) if r.get("val_loss") is not None and r["step"] > 0}


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
    assert late["metrics"]["catch_ups"] >= 1 and late["metrics"]["state_loads"] >= 1, late["metrics"]
    first = next(r["step"] for r in _rows(tmp_path / "late") if "loss" in r)
    assert first >= 3, first
    # ...so its adapter is the swarm's adapter.
    assert rel_diff(adapter(tmp_path / "a"), adapter(tmp_path / "late")) < 0.15
    if job is not None:  # run as a job step: the bead followed the swarm
        bd, bead = job
        issue = bd.show(bead)
        history = [h["status"] for h in issue.metadata["status_history"]]
        assert "syncing" in history and issue.status == "degraded", (
            history, {n: _rounds(peers.log(n)) for n in ("a", "b")})
        assert history.index("syncing") < history.index("degraded")


def _rounds(log: str) -> str:
    """The lines of a peer's log about averaging rounds, step transitions, lost peers and job status."""
    keys = ("averag", "epoch", "Averag", "local gradients", "gradients only", "out of sync", "swarm's state",
            "job status", "silent for")
    return "\n".join(x for x in log.splitlines() if any(k in x for k in keys))[-4000:]


def _single_process_curve(corpus: Path, steps: int, batch: int, eval_steps: list[int]) -> dict[int, float]:
    """Plain local training with the training core's pieces: batch `batch`, no swarm at all."""
    import torch

    from gt_ext.train.config import load_config
    from gt_ext.train.data import BatchLoader, fixed_batches, load_items
    from gt_ext.train.loop import lr_lambda, validation_loss
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
            curve[step] = validation_loss(model, val_b, cfg)
    return curve


def test_two_peers_batch_b_equal_one_process_batch_2b(tmp_path: Path, corpus: Path, swarm_key: Path,
                                                       peers: Peers):
    steps, B = 4, 4
    kw = dict(target_batch_size=2 * B, lockstep=True, min_peers=2, wait_for_peers_s=240, group_size=2)
    addrs = _start_first(peers, tmp_path, corpus, swarm_key, steps, shard=(0, 2), **kw)
    peers.fork("b", corpus, tmp_path / "b", swarm_key, steps, initial_peers=addrs, shard=(1, 2), **kw)
    for name in ("a", "b"):
        assert peers.wait(name, 300) == 0, peers.log(name)[-3000:]
    for name in ("a", "b"):  # every gradient round averaged both peers' batches (the log says why not)
        metrics = run_json(tmp_path / name)["metrics"]
        assert (metrics["local_rounds"], metrics["state_loads"]) == (0, 0), (metrics, _rounds(peers.log(name)))
    swarm = _val_curve(tmp_path / "a")
    assert sorted(swarm) == [2, 4]
    local = _single_process_curve(corpus, steps, 2 * B, sorted(swarm))
    start = run_json(tmp_path / "a")["metrics"]["val_loss_start"]
    for s in swarm:
        # Same curve within tolerance (the swarm averages two 4-row token means; one process takes
        # the 8-row token mean), while the loss itself moves by much more than the tolerance.
        assert abs(swarm[s] - local[s]) < 0.01, (s, swarm[s], local[s])
    assert start - swarm[4] > 0.1


class Interrupt(Exception):
    pass


def test_swarm_checkpoint_resumes_with_gt_ext_train(tmp_path: Path, corpus: Path, swarm_key: Path, peers: Peers):
    """A peer's checkpoint is the training core's: `gt-ext train --resume` restores its adapter,
    optimizer, schedule and data order and finishes the run where the peer died."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from gt_ext.cli import main
    from gt_ext.train import checkpoint
    from gt_ext.train.loop import Trainer
    from gt_ext.train.lora import load_base_for_training
    from gt_ext.train.run import prepare

    run = tmp_path / "run"
    peers.fork("peer", corpus, run, swarm_key, 5, target_batch_size=4, stop_after=3)
    assert peers.wait("peer", 300) == 1, peers.log("peer")[-3000:]  # died after step 3, as a crash
    assert run_json(run)["status"] == "failed"
    ckpt = checkpoint.latest(run)
    state = checkpoint.read_state(ckpt)  # weights-only load: the format is plain tensors and numbers
    assert (ckpt.name, state.step, state.scheduler["last_epoch"]) == ("step-3", 3, 3)
    assert state.extra["swarm_run_id"] == "gt-witness"

    # The Trainer's own restore of that checkpoint is exact.
    p = prepare("witness", corpus, None, None, TEST_SETS + ["max_steps=5"])
    model, _ = load_base_for_training(p.cfg)
    tr = Trainer(p.cfg, model, p.tokenizer, p.train, p.val, run, progress=False)
    tr.load_checkpoint(ckpt)
    saved = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    now = get_peft_model_state_dict(model)
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)
    assert torch.equal(tr.opt.state_dict()["state"][0]["exp_avg"], state.optimizer["state"][0]["exp_avg"])
    assert (tr.step, tr.sched.last_epoch, tr.loader.state_dict()) == (3, 3, state.data)

    rc = main(["train", "--role", "witness", "--corpus", str(corpus), "--out", str(run), "--resume",
               "--no-progress", *TEST_SETS, "max_steps=5"])
    assert rc == 0
    info = run_json(run)
    assert info["status"] == "done" and info["metrics"]["steps"] == 5
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4, 5]
    assert info["metrics"]["val_loss_start"] == _rows(run)[0]["val_loss"]  # the peer's step 0


def test_train_checkpoint_resumes_in_a_swarm_peer(tmp_path: Path, corpus: Path, swarm_key: Path, peers: Peers):
    """And the other way: a `gt-ext train` checkpoint continues in `gt-ext swarm start --resume`."""
    from gt_ext.train.run import prepare, run_training

    run = tmp_path / "run"
    p = prepare("witness", corpus, None, None, TEST_SETS + ["max_steps=5"])

    def stop_at_3(step: int, _row: dict) -> None:
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(p, run, progress=False, callbacks=[stop_at_3])
    local_start = _rows(run)[0]["val_loss"]
    peers.fork("peer", corpus, run, swarm_key, 5, target_batch_size=4, resume=True)
    assert peers.wait("peer", 300) == 0, peers.log("peer")[-3000:]
    info = run_json(run)
    assert info["swarm"]["resumed_from"] == 3 and info["status"] == "done" and info["metrics"]["steps"] == 5
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4, 5]
    assert info["metrics"]["val_loss_start"] == local_start
    assert info["metrics"]["val_loss_end"] < local_start
