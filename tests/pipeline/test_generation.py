"""Generation through real node0 stage servers (from ../shared/upstream/node0 unless $NODE0_PATH) on
127.0.0.1: a 4-layer tiny LLaMA in three stages plus a replica of the middle one, shared by the
tests of this module (in file order: the last tests kill stages). Every process is reaped at the end.

The tiny model is drawn with a large init (std 0.3) so that greedy text changes from token to token;
at the usual 0.02 it repeats one token and an equality test could not fail."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pipeline_helpers import Stages

from gt_ext.errors import GtExtError
from gt_ext.gastown.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = "gentest"
STAGE_SETTINGS = ["lora.r=4", "threads=1"]
NEW_TOKENS = 12


def _make_adapter(model: Path, out: Path, seed: int, targets: tuple[str, ...], r: int) -> Path:
    """A real PEFT adapter folder for `model` with random non-zero A and B."""
    from peft import LoraConfig, get_peft_model

    from gt_ext.models import load_model

    base, _ = load_model(str(model))
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                 init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gen_pipe(pipeline_key: Path, tmp_path_factory: pytest.TempPathFactory):
    """Stages s0 (layers 0-1), s1 and s1b (layer 2), s2 (layer 3) of a varied tiny LLaMA, a role
    adapter and a task adapter for it, and a generation client."""
    from gt_ext.models.base import build_tiny_llama
    from gt_ext.pipeline.inference import PipelineInference
    from gt_ext.pipeline.stage import model_fingerprint
    from gt_ext.swarm.auth import SwarmKey
    from gt_ext.swarm.dht import start_dht, visible_addrs

    tmp = tmp_path_factory.mktemp("gen")
    model = build_tiny_llama(tmp / "model", num_layers=4, init_std=0.3)
    adapters = {"role": _make_adapter(model, tmp / "role", 1, ("q_proj", "v_proj", "o_proj"), 4),
                "task": _make_adapter(model, tmp / "task", 2, ("k_proj", "gate_proj", "down_proj"), 2)}
    key = SwarmKey.load(pipeline_key)
    boot = start_dht([], None, key, run_id=RUN, username="boot")
    stages = Stages(tmp)
    client = None
    try:
        addrs = visible_addrs(boot)
        for name, layers in (("s0", "0/3"), ("s1", "1/3"), ("s1b", "1/3"), ("s2", "2/3")):
            stages.start(name, RUN, layers, pipeline_key, [f"base_model={model}", *STAGE_SETTINGS], addrs)
        for name in ("s0", "s1", "s1b", "s2"):
            stages.wait(name)
        client = PipelineInference(RUN, addrs, key, base_hash=model_fingerprint(model), route_timeout=60)
        yield SimpleNamespace(tmp=tmp, key=key, key_file=pipeline_key, addrs=addrs, stages=stages, model=model,
                              adapters=adapters, client=client)
    finally:
        if client is not None:
            client.close()
        stages.close()
        boot.shutdown()


def _prompt() -> torch.Tensor:
    return torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 28, 17, 30]])


def _greedy(client, adapters, n: int = NEW_TOKENS, on_token=None) -> tuple[list[int], object]:
    """Greedy tokens through the stages (sampling at the client, one token per step)."""
    session = client.session(adapters)
    logits = client.run(session.step(_prompt()))
    out = []
    try:
        for k in range(n):
            out.append(int(logits.argmax()))
            if on_token is not None:
                on_token(k, session)
            logits = client.run(session.step(torch.tensor([[out[-1]]])))
    finally:
        client.run(session.close())
    return out, session


def _single_process_greedy(model: Path, stack: list[tuple[Path, float]], n: int = NEW_TOKENS) -> list[int]:
    """The same greedy decoding in one process: the whole model with the adapters' weighted deltas
    merged into its weights, and transformers' own KV-cached decoding."""
    from gt_ext.models import load_model
    from gt_ext.serve.adapter_stack import LoraAdapter

    full, _ = load_model(str(model))
    with torch.no_grad():
        for folder, weight in stack:
            ad = LoraAdapter.load(folder)
            for module, (a, b) in ad.weights.items():
                full.get_submodule(module).weight += weight * ad.scale * (b @ a)
        out = full.generate(_prompt(), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, _prompt().shape[1]:].tolist()


def test_greedy_generation_equals_single_process(gen_pipe):
    """Base model, a role adapter, and role + task adapters at weights 1 and 0.5, each applied per
    request at every stage: the same greedy tokens as one process."""
    from gt_ext.pipeline.inference import AdapterBlob

    role, task = AdapterBlob.load(gen_pipe.adapters["role"]), AdapterBlob.load(gen_pipe.adapters["task"])
    outs = {}
    for label, stack in (("base", []), ("role", [(role, 1.0)]), ("role+task", [(role, 1.0), (task, 0.5)])):
        tokens, session = _greedy(gen_pipe.client, stack)
        ref = _single_process_greedy(gen_pipe.model, [(b.folder, w) for b, w in stack])
        assert tokens == ref, label
        assert session.failovers == 0 and len(set(tokens)) > NEW_TOKENS // 2, label
        # The last step's accounting (bench/pipeline.py splits a step's time with it): the layers'
        # time lies inside the stage processes' time.
        assert 0 < session.compute_s <= session.stage_s and session.compute_cpu_s > 0, label
        outs[label] = tokens
    assert len({tuple(t) for t in outs.values()}) == 3  # each adapter stack changed the answer


def test_serving_generator_on_the_pipeline_backend_answers_as_torch(gen_pipe):
    """`Generator(backend="pipeline")` (what `gt-ext serve`, `node0-inference` and the API run with
    `--backend pipeline`): a chat with the role adapter, the same chat on the base model, both in one
    batch, and the API's streamed answer give the torch backend's greedy text and token counts."""
    from gt_ext.serve.generate import GenerationStats, Generator
    from gt_ext.serve.params import SamplingParams
    from gt_ext.serve.pipeline import PipelineTarget

    role = gen_pipe.adapters["role"]
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    target = PipelineTarget(run=RUN, initial_peers=gen_pipe.addrs, key=gen_pipe.key)
    pipe = Generator(str(gen_pipe.model), [(role, 1.0)], backend="pipeline", pipeline=target)
    try:
        ref = Generator(str(gen_pipe.model), [(role, 1.0)], backend="torch")
        for adapters in (None, []):
            got, want = GenerationStats(), GenerationStats()
            assert pipe.chat(msgs, params, adapters=adapters, stats=got) == \
                ref.chat(msgs, params, adapters=adapters, stats=want), adapters
            assert (got.prompt_tokens, got.completion_tokens, got.finish_reason) == \
                (want.prompt_tokens, want.completion_tokens, want.finish_reason)
        two = [{"role": "user", "content": "Name a town."}]

        def batch(gen: Generator) -> list[str]:
            texts = ["", ""]
            for i, piece in gen.stream_batch([gen.request(msgs, params), gen.request(two, params, adapters=[])]):
                texts[i] += piece
            return texts

        assert batch(pipe) == batch(ref)
        # The OpenAI-compatible API on it (`gt-ext serve --backend pipeline`), streamed as SSE.
        from fastapi.testclient import TestClient

        from gt_ext.models.refs import ResolvedModel
        from gt_ext.serve.api import create_app

        served = ResolvedModel(ref="tiny-pipe", base_model=str(gen_pipe.model), adapters=[(role, 1.0)])
        with TestClient(create_app(pipe, served)) as api:
            r = api.post("/v1/chat/completions", json={"model": "tiny-pipe", "messages": msgs, "max_tokens": 10,
                                                       "temperature": 0, "stream": True})
        assert r.status_code == 200, r.text
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ref.chat(msgs, params)
    finally:
        pipe.close()


def test_intruder_without_the_key_cannot_open_a_generation_session(gen_pipe):
    """A peer without the swarm key that dials a stage directly gets its generation stream refused."""
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
    from hivemind.p2p import P2P, PeerID

    from gt_ext.pipeline.inference import SpanStream
    from node0_patches.inference import StageInference

    head = next(r for r in gen_pipe.client.client.records() if r.first == 0)

    async def dial() -> str:
        p2p = await P2P.create(initial_peers=gen_pipe.stages.ready["s0"]["addrs"])
        try:
            stream = SpanStream(head, StageInference.get_stub(p2p, PeerID.from_base58(head.peer)), timeout=60)
            await stream.open(30)
            try:
                await stream.call({"op": "step", "session": "intruder", "start": 0, "adapters": []}, [_prompt()])
            except GtExtError as e:
                return str(e)
            finally:
                await stream.close(say_bye=False)
            return "answered"
        finally:
            await p2p.shutdown()

    assert "not a member of swarm run gentest" in RemoteExpertWorker.run_coroutine(dial())


def _stage_numbers(client) -> tuple[int, int]:
    """(generation steps served, sessions open) over the live stages, from their announcements."""
    records = client.client.records()
    return (sum(int(r.extra.get("inference_steps") or 0) for r in records),
            sum(int(r.extra.get("sessions") or 0) for r in records))


def test_node0_inference_agent_in_a_tmux_pane_generates_through_the_stages(gen_pipe, tmp_path):
    """The provider's path: `node0-inference --backend pipeline` started in a tmux pane the way gt
    starts it answers a typed prompt through the stages (their step counts grow), closes its sessions
    there, and exits on EOF."""
    import shutil
    import subprocess
    import sys

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    agent_bin = str(Path(sys.executable).parent / "node0-inference")
    steps_before, _ = _stage_numbers(gen_pipe.client)
    session = f"gtext-pipe-{os.getpid()}"
    sock = ["-L", session]  # a private tmux server
    peers = " ".join(f"--initial-peers {a}" for a in gen_pipe.addrs)
    cmd = (f"exec env GT_ROLE=witness GT_EXT_CLAUDE_PROJECTS={tmp_path / 'projects'} {agent_bin} "
           f"--model {gen_pipe.model} --adapters {gen_pipe.adapters['role']} --backend pipeline --run {RUN} "
           f"{peers} --swarm-key {gen_pipe.key_file} --max-new-tokens 6 --no-transcript")
    subprocess.run(["tmux", *sock, "new-session", "-d", "-s", session, "-c", str(tmp_path), "-x", "200", "-y", "50",
                    cmd], check=True)

    def pane() -> str:
        return subprocess.run(["tmux", *sock, "capture-pane", "-p", "-J", "-t", session],
                              capture_output=True, text=True).stdout

    def wait_for(pred, timeout: float = 180) -> bool:
        return wait_until(pred, timeout)

    try:
        assert wait_for(lambda: "node0> " in pane()), pane()
        assert " on pipeline " in pane()
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, "-l", "hello stages"], check=True)
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, "Enter"], check=True)
        assert wait_for(lambda: pane().count("node0>") >= 2 and pane().rstrip().endswith("node0>")), pane()
        # The announcements (every 2 s) show the steps served and no session left open.
        assert wait_for(lambda: _stage_numbers(gen_pipe.client)[0] > steps_before
                        and _stage_numbers(gen_pipe.client)[1] == 0, 20)
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, "C-d"], check=True)
        assert wait_for(lambda: subprocess.run(["tmux", *sock, "has-session", "-t", session],
                                               capture_output=True).returncode != 0, 60)
    finally:
        subprocess.run(["tmux", *sock, "kill-server"], capture_output=True)


def test_replica_killed_mid_generation_another_takes_over(gen_pipe):
    """kill -9 of the replica serving layer 2 after 4 tokens: the session replays its prefix to the
    other replica and the answer completes, token for token the uninterrupted one."""
    from gt_ext.pipeline.inference import AdapterBlob

    stack = [(AdapterBlob.load(gen_pipe.adapters["role"]), 1.0)]
    expected, _ = _greedy(gen_pipe.client, stack)
    by_peer = {gen_pipe.stages.ready[n]["peer"]: n for n in ("s1", "s1b")}
    killed, serving = [], []

    def kill_middle(k: int, session) -> None:
        if k == 4:
            name = by_peer[session.replicas()[1]]
            gen_pipe.stages.kill(name, signal.SIGKILL)
            killed.append(name)
        if k == NEW_TOKENS - 1:
            serving.append(by_peer[session.replicas()[1]])

    tokens, session = _greedy(gen_pipe.client, stack, on_token=kill_middle)
    assert killed and gen_pipe.stages.procs[killed[0]].poll() is not None
    assert tokens == expected
    assert session.failovers == 1 and serving and serving[0] != killed[0]


def test_missing_stage_names_the_uncovered_layers_within_10s(gen_pipe):
    client = gen_pipe.client
    session = client.session()
    client.run(session.step(_prompt()))
    gen_pipe.stages.kill("s2", signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(GtExtError, match="no live stage serves layers 3-3"):
        client.run(session.step(torch.tensor([[5]])))
    assert time.monotonic() - t0 < 10


def test_no_stage_process_outlives_its_test(gen_pipe):
    """Every process of every stage is gone once the stages are closed."""
    gen_pipe.stages.close()
    assert not gen_pipe.stages.leftovers()
