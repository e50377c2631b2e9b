"""Real node0 stage servers (from ../shared/upstream/node0 unless $NODE0_PATH) on 127.0.0.1: three
stages of a 4-layer tiny LLaMA plus a replica of the middle one, shared by the tests of this module
(in file order: the last tests kill stages). Every process is reaped at the end."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pipeline_helpers import Stages

from gt_ext.cli import main
from gt_ext.errors import GtExtError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = "ptest"
# One config for the stages and the trainers (a stage holds the LoRA and optimizer of its layers).
SETTINGS = ["lora.r=4", "max_steps=6", "optim.grad_accum=2", "data.batch_size=2", "data.pack_length=256",
            "data.max_length=256", "eval_every=0", "checkpoint_every=3", "optim.lr=0.01", "optim.warmup_steps=1",
            "optim.grad_clip=0.5", "threads=1", "seed=3", "attention=dense"]


@pytest.fixture(scope="module")
def pipe(tiny4: Path, pipeline_key: Path, tmp_path_factory: pytest.TempPathFactory):
    """A bootstrap DHT node (this process) and the stage servers s0 (layers 0-1), s1 and s1b
    (layer 2), s2 (layer 3)."""
    from gt_ext.swarm.auth import SwarmKey
    from gt_ext.swarm.dht import start_dht, visible_addrs

    tmp = tmp_path_factory.mktemp("pipe")
    key = SwarmKey.load(pipeline_key)
    boot = start_dht([], None, key, run_id=RUN, username="boot")
    stages = Stages(tmp)
    overrides = [f"base_model={tiny4}", *SETTINGS]
    try:
        addrs = visible_addrs(boot)
        for name, layers in (("s0", "0/3"), ("s1", "1/3"), ("s1b", "1/3"), ("s2", "2/3")):
            stages.start(name, RUN, layers, pipeline_key, overrides, addrs,
                         extra=["--checkpoint-dir", str(tmp / "checkpoints" / name)])
        for name in ("s0", "s1", "s1b", "s2"):
            stages.wait(name)
        yield SimpleNamespace(tmp=tmp, key=key, key_file=pipeline_key, addrs=addrs, stages=stages,
                              overrides=overrides, model=tiny4)
    finally:
        stages.close()
        boot.shutdown()


def _client(pipe, **kw):
    from gt_ext.pipeline.client import PipelineClient

    return PipelineClient(RUN, pipe.addrs, pipe.key, **kw)


def _batch():
    ex = torch.tensor([[0] * 5 + [1] * 7, [2] * 9 + [-1] * 3])
    pos = torch.tensor([list(range(5)) + list(range(7)), list(range(9)) + list(range(3))])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 12), generator=g)
    targets = torch.roll(ids, -1, 1)
    targets[1, 8:] = -100
    return {"input_ids": ids, "position_ids": pos, "example_index": ex, "targets": targets}


def test_pipeline_forward_equals_single_forward(pipe):
    from gt_ext.models import load_model
    from gt_ext.pipeline.trainer import PipelineModel
    from gt_ext.train.data import dense_mask

    b = _batch()
    client = _client(pipe)
    try:
        route = client.wait_for_route(60)
        assert [[r.span_label for r in g] for g in route] == [["layers 0-1"], ["layers 2-2"] * 2, ["layers 3-3"]]
        logp, _ = PipelineModel(client).forward(route, b)
        again, _ = PipelineModel(client).forward(route, b)  # the other replica of layer 2
    finally:
        client.close()
    model, _ = load_model(str(pipe.model))
    with torch.no_grad():
        h = model.model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                        attention_mask=dense_mask(b["example_index"])).last_hidden_state
        sel = b["targets"] != -100
        ref = torch.zeros(2, 12)
        ref[sel] = -torch.nn.functional.cross_entropy(model.lm_head(h[sel]), b["targets"][sel], reduction="none")
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, logp, atol=0, rtol=0)


def test_pipeline_status_lists_the_stages(pipe, capsys):
    assert main(["pipeline", "status", "--run", RUN, "--swarm-key", str(pipe.key_file),
                 "--initial-peers", pipe.addrs[0], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["complete"] and sorted((s["first"], s["last"]) for s in report["stages"]) == [(0, 2), (2, 3), (2, 3), (3, 4)]


def test_nan_gradient_is_skipped_and_counted_not_fatal(pipe):
    from gt_ext.pipeline.trainer import stage_inputs

    b = _batch()
    client = _client(pipe)
    try:
        tail = client.wait_for_route(60)[-1]
        x = torch.randn(2, 12, 64)
        args = stage_inputs(b, x, torch.ones(2), tail=True)
        grads = client.backward(tail, args, [torch.full((2, 12), float("nan"))])
        info = client.stage_info(tail[0])
        assert info["nan_skips"] == 1 and info["samples"] == 1 and info["epoch"] == 0
        assert info["kind"] == "tail" and info["adapter_names"]
        assert grads[0].shape == x.shape
        info = client.reset(tail[0])  # the half step is dropped; the stage is as it was
        assert info["samples"] == 0 and info["reset_done"] >= 1
    finally:
        client.close()


def test_intruder_without_the_key_is_refused(pipe, tmp_path):
    """A peer without the swarm key cannot join the DHT (so it cannot find, announce or serve
    stages) and a stage refuses its forward and backward calls even when it dials it directly."""
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
    from hivemind.p2p import P2P, P2PHandlerError, PeerID
    from hivemind.proto import runtime_pb2

    from gt_ext.pipeline.client import _serialize
    from gt_ext.swarm.auth import SwarmKey
    from gt_ext.swarm.dht import start_dht
    from node0_patches.handler import StageHandler

    with pytest.raises(GtExtError):  # the DHT nodes of the swarm ignore a peer with another key
        start_dht(pipe.addrs, None, SwarmKey.generate(), run_id=RUN, username="intruder").shutdown()
    ready = pipe.stages.ready["s2"]
    b = _batch()
    tensors = [torch.randn(2, 12, 64), b["position_ids"], b["example_index"], torch.ones(2), b["targets"]]

    async def dial() -> list[str]:
        p2p = await P2P.create(initial_peers=ready["addrs"])
        errors = []
        try:
            stub = StageHandler.get_stub(p2p, PeerID.from_base58(ready["peer"]))
            for call in (stub.rpc_forward, stub.rpc_backward):
                try:
                    await call(runtime_pb2.ExpertRequest(uid=ready["uid"], tensors=_serialize(tensors)))
                except P2PHandlerError as e:
                    errors.append(str(e))
        finally:
            await p2p.shutdown()
        return errors

    errors = RemoteExpertWorker.run_coroutine(dial())
    assert len(errors) == 2 and all("not a member of swarm run ptest" in e for e in errors)


def _prepare(pipe, corpus: Path):
    from gt_ext.train.run import prepare

    return prepare("witness", corpus, None, None, pipe.overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train_corpus import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "c", n_train=8, n_val=2)


@pytest.fixture(scope="module")
def single(pipe, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config trained in one process (gt-ext train's code path)."""
    from gt_ext.train.run import run_training

    out = tmp_path_factory.mktemp("single") / "run"
    assert run_training(_prepare(pipe, corpus), out, progress=False)["status"] == "done"
    return out


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b) and len(a) == 32  # 4 layers x (q, k, v, o) x (A, B)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def test_pipeline_training_equals_single_process_training(pipe, corpus, single, tmp_path_factory):
    """Same data, seed and config: the adapter gathered from the stages after 3 steps (with the
    two replicas of layer 2 taking turns and taking each other's state, and clipping by the global
    norm) equals one process's."""
    from gt_ext.pipeline.trainer import PipelineSettings, run_pipeline_training

    out = tmp_path_factory.mktemp("pipe-run") / "run"
    pipe.run_dir = out
    statuses = []
    final = run_pipeline_training(
        _prepare(pipe, corpus), out, PipelineSettings(run=RUN, initial_peers=pipe.addrs, key=pipe.key,
                                                      stop_after_steps=3),
        progress=False, on_status=lambda s, why: statuses.append(s))
    assert final["status"] == "stopped" and final["metrics"]["steps"] == 3
    assert statuses == ["syncing"]
    _assert_same_weights(_adapter(out / "checkpoints" / "step-3" / "adapter"),
                         _adapter(single / "checkpoints" / "step-3" / "adapter"))
    pipe_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    single_rows = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert pipe_rows[0]["val_loss"] == pytest.approx(single_rows[0]["val_loss"], abs=1e-5)
    for p, s in zip(pipe_rows[1:4], single_rows[1:4], strict=True):
        assert p["step"] == s["step"] and p["loss"] == pytest.approx(s["loss"], abs=1e-5)
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "pipeline" and run["config"]["max_steps"] == 6


def test_replica_killed_during_training_run_continues_degraded(pipe, corpus, single, capsys):
    """kill -9, between steps 4 and 5 of the resumed run, of the replica of layer 2 that took step 4
    (the trainer gives step N's micro-batches to replica N-1 mod 2, by peer id): the trainer goes on
    with the other one, which holds step 4 only because it took that step's state from the killed
    one; the run ends `degraded`, and no committed step is lost (the final adapter is still the
    single-process one)."""
    from gt_ext.pipeline.trainer import PipelineSettings, run_pipeline_training

    statuses = []
    by_peer = {pipe.stages.ready[name]["peer"]: name for name in ("s1", "s1b")}
    victim = by_peer[sorted(by_peer)[(4 - 1) % 2]]

    def kill_after_step_4(step: int, rec: dict) -> None:
        if step == 4:
            pipe.stages.kill(victim, signal.SIGKILL)

    final = run_pipeline_training(
        _prepare(pipe, corpus), pipe.run_dir, PipelineSettings(run=RUN, initial_peers=pipe.addrs, key=pipe.key),
        resume=True, progress=False, on_status=lambda s, why: statuses.append(s), on_step=kill_after_step_4)
    assert final["status"] == "degraded" and final["metrics"]["steps"] == 6
    assert final["metrics"]["lost_replicas"] == 1 and "degraded" in statuses
    assert pipe.stages.procs[victim].poll() is not None
    _assert_same_weights(_adapter(pipe.run_dir / "adapter"), _adapter(single / "adapter"))
    assert all(math.isfinite(float(t.abs().sum())) for t in _adapter(pipe.run_dir / "adapter").values())
    # `gt-ext swarm status` shows the stages (node0's monitor, subclassed) and the trainer.
    assert main(["swarm", "status", "--run-id", RUN, "--swarm-key", str(pipe.key_file),
                 "--initial-peers", pipe.addrs[0], "--json"]) == 0
    peers = json.loads(capsys.readouterr().out)["peers"].values()
    assert {p.get("layers") for p in peers if p.get("role") == "stage"} == {"0-1", "2-2", "3-3"}
    trainer = max((p for p in peers if p.get("role") == "trainer"), key=lambda p: p["epoch"])  # this session's
    assert trainer["epoch"] == 6 and trainer["state"] == "degraded" and math.isfinite(trainer["loss"])


def test_missing_stage_names_the_uncovered_layers_within_10s(pipe):
    client = _client(pipe)
    try:
        client.wait_for_route(30)
        pipe.stages.kill("s2", signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(GtExtError, match="no live stage serves layers 3-3") as err:
            while time.monotonic() - t0 < 30:
                route = client.route()
                client.forward(route[-1], [torch.zeros(1, 2, 64), torch.zeros(1, 2, dtype=torch.long),
                                           torch.zeros(1, 2, dtype=torch.long), torch.ones(1),
                                           torch.zeros(1, 2, dtype=torch.long)])
                time.sleep(0.2)
        assert time.monotonic() - t0 < 10, err.value
        # kill -9 lost no committed step: the stage comes back from its --checkpoint-dir at step 6.
        pipe.stages.restart("s2")
        pipe.stages.wait("s2")
        tail = client.wait_for_route(60)[-1]
        assert [client.stage_info(r)["epoch"] for r in tail] == [6]
    finally:
        client.close()


def test_stage_of_another_base_model_or_without_the_key_cannot_serve(pipe, tmp_path):
    from gt_ext.models.base import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", num_layers=4, seed=1)
    extra = Stages(tmp_path)
    try:
        extra.start("wrong-base", RUN, "1/3", pipe.key_file, [f"base_model={other}", *SETTINGS], pipe.addrs)
        wrong_key = tmp_path / "wrong.key"
        from gt_ext.swarm.auth import SwarmKey

        SwarmKey.generate().save(wrong_key)
        extra.start("wrong-key", RUN, "1/3", wrong_key, pipe.overrides, pipe.addrs)
        for name in ("wrong-base", "wrong-key"):
            assert extra.procs[name].wait(timeout=240) != 0, extra.log_tail(name)
        assert "no initial peer of run ptest answered" in extra.log_tail("wrong-key")
        assert "refusing to join" in extra.log_tail("wrong-base") and "base model" in extra.log_tail("wrong-base")
        # It refused before node0 built its averagers: it never took the run's state.
        assert "Downloading parameters" not in extra.log_tail("wrong-base", n=1000)
        assert not (tmp_path / "wrong-base.ready.json").exists() and not (tmp_path / "wrong-key.ready.json").exists()
    finally:
        extra.close()


def test_no_stage_process_outlives_its_test(pipe):
    """Every process of every stage (task pools, handlers, averagers, p2p daemons) is gone: each
    stage ran in its own process group, and no member of those groups is left."""
    pipe.stages.close()
    assert all(proc.poll() is not None for proc in pipe.stages.procs.values())
    assert not pipe.stages.leftovers()
