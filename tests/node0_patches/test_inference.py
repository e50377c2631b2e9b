"""Generation on a stage, without the network: the session store's bounds, expiry and rewinds, serving
adapters held by a stage (uploaded in parts, least recently used dropped), and a node0 stage
expert's cached `infer` against the whole model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gt_ext.errors import GtExtError

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("NODE0_PATH", str(REPO.parent / "shared" / "upstream" / "node0"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeCache:
    """Records crops (a real DynamicCache is used in the expert test below)."""

    def __init__(self) -> None:
        self.crops: list[int] = []

    def crop(self, n: int) -> None:
        self.crops.append(n)


def _store(**limits):
    from node0_patches.inference import InferenceLimits, SessionStore

    clock = Clock()
    return SessionStore(InferenceLimits(**limits), FakeCache, max_length=100, clock=clock), clock


def _code(fn) -> str:
    from node0_patches.inference import InferenceError

    with pytest.raises(InferenceError) as e:
        fn()
    return e.value.code


def test_sessions_are_keyed_by_id_and_position():
    store, clock = _store()
    s = store.prepare("a", 0, 5)
    s.length = 5
    assert store.prepare("a", 5, 1) is s
    s.length = 6
    assert _code(lambda: store.prepare("a", 9, 1)) == "replay"  # a gap: the client replays
    assert _code(lambda: store.prepare("b", 3, 1)) == "replay"  # unknown session past position 0
    assert store.prepare("a", 4, 2) is s and s.cache.crops == [-2] and s.length == 4  # a step sent again
    assert _code(lambda: store.prepare("a", 99, 2)) == "bad"  # beyond the model's context
    store.close("a")
    assert "a" not in store.sessions


def test_sessions_are_bounded_and_idle_ones_expire():
    store, clock = _store(max_sessions=2, max_tokens=10, idle_s=30)
    store.prepare("a", 0, 4).length = 4
    clock.now = 20
    store.prepare("b", 0, 4).length = 4
    assert _code(lambda: store.prepare("c", 0, 1)) == "full"  # two sessions, both fresh
    assert _code(lambda: store.prepare("b", 4, 3)) == "full"  # 4 + 7 tokens > 10
    clock.now = 40  # "a" idle for 40 s > 30: it makes room
    store.prepare("c", 0, 5).length = 5
    assert set(store.sessions) == {"b", "c"} and store.tokens == 9
    clock.now = 100
    assert store.expire() == 2 and not store.sessions
    with pytest.raises(GtExtError):
        from node0_patches.inference import InferenceLimits

        InferenceLimits(max_sessions=0)


class FakeStage:
    def __init__(self) -> None:
        self.added: dict[str, tuple[float, dict]] = {}
        self.dropped: list[str] = []

    def add_serving_adapter(self, name, scale, weights):
        if "bad" in weights:
            raise GtExtError("bad module")
        self.added[name] = (scale, weights)

    def drop_serving_adapter(self, name):
        self.dropped.append(name)


def test_serving_adapters_arrive_in_parts_and_the_least_recently_used_goes():
    from node0_patches.inference import ServingAdapters

    stage = FakeStage()
    held = ServingAdapters(stage, max_adapters=2)
    a, b = torch.zeros(2, 4), torch.zeros(4, 2)

    def put(name, part, parts, modules):
        held.put({"name": name, "scale": 2.0, "part": part, "parts": parts, "modules": modules},
                 [t for _ in modules for t in (a, b)])

    put("g1", 0, 2, ["m0"])
    assert "g1" not in stage.added and _code(lambda: held.use([["g1", 1.0]])) == "adapter"
    put("g1", 1, 2, ["m1"])
    assert set(stage.added["g1"][1]) == {"m0", "m1"} and held.use([["g1", 0.5]]) == [("g1", 0.5)]
    put("g2", 0, 1, ["m0"])
    held.use([["g1", 1.0]])  # g1 used last: g2 is the least recently used
    put("g3", 0, 1, ["m0"])
    assert stage.dropped == ["g2"] and list(held.held) == ["g1", "g3"]
    assert _code(lambda: put("g4", 0, 1, ["bad"])) == "bad"
    # Unfinished uploads are bounded too: a third one pushes out the oldest (its first part is lost).
    put("p1", 0, 2, ["m0"])
    put("p2", 0, 2, ["m0"])
    put("p3", 0, 2, ["m0"])
    assert list(held.pending) == ["p2", "p3"]
    put("p1", 1, 2, ["m1"])  # p1 starts over: one part of two, not added
    assert "p1" not in stage.added and "p1" in held.pending


def test_expert_infer_with_a_kv_cache_equals_the_whole_model(tmp_path):
    """node0 experts of three spans, fed the prompt then one token at a time with a KV cache per
    stage (and a step sent again after a rewind), give the whole model's next-token logits; a
    serving adapter at weight 0.5 gives the merged model's."""
    from gt_ext.models import load_model
    from gt_ext.models.base import build_tiny_llama
    from gt_ext.pipeline.stage import split_layers
    from gt_ext.train.config import LoraSettings
    from node0_patches.experts import register_stage_experts, stage_arguments
    from node0_patches.inference import InferenceLimits, SessionStore

    model_dir = build_tiny_llama(tmp_path / "m", num_layers=4, init_std=0.3)
    classes = register_stage_experts()
    lora = LoraSettings(r=4, targets=["q_proj", "v_proj"])
    experts = []
    for span in split_layers(4, 3):
        name = {"head": "lm_head_lora", "body": "lm_body_lora", "tail": "lm_tail_lora"}[span.kind]
        experts.append(classes[name](stage_arguments(model_dir, span, lora)))
    full, _ = load_model(str(model_dir))
    g = torch.Generator().manual_seed(0)
    weights = {f"model.layers.{i}.mlp.up_proj": (torch.randn(2, 64, generator=g) * 0.3,
                                                 torch.randn(128, 2, generator=g) * 0.3) for i in range(4)}
    ids = torch.randint(0, 1000, (1, 9), generator=g)

    def run(stack):
        stores = [SessionStore(InferenceLimits(), e.stage.new_cache, 2048) for e in experts]
        out = []
        for start, chunk in ((0, ids[:, :6]), (6, ids[:, 6:7]), (7, ids[:, 7:8]), (7, ids[:, 7:9])):
            x = chunk
            for e, store in zip(experts, stores, strict=True):
                s = store.prepare("sess", start, x.shape[1])
                with torch.inference_mode(), e.stage.serving_adapters(stack):
                    x = e.infer(x, start, s.cache)
                s.length = start + chunk.shape[1]
            out.append(x[0])
        return torch.stack(out)  # next-token logits after 6, 7, 8 (rewound: same as before) and 9 tokens

    def reference():
        with torch.no_grad():
            logits = full(ids).logits[0]
        return logits[[5, 6, 7, 8]]

    torch.testing.assert_close(run([]), reference(), atol=1e-4, rtol=1e-4)
    for e in experts:
        e.stage.add_serving_adapter("gup", 1.5, {k: v for k, v in weights.items()
                                                 if e.span.first <= int(k.split(".")[2]) < e.span.last})
    with torch.no_grad():
        for k, (a, b) in weights.items():
            full.get_submodule(k).weight += 0.5 * 1.5 * (b @ a)
    torch.testing.assert_close(run([("gup", 0.5)]), reference(), atol=1e-4, rtol=1e-4)
    # The trained adapter is untouched: still the only trainable one, still active outside generation.
    for e in experts:
        assert {n for n, p in e.stage.named_parameters() if p.requires_grad} == \
            {n for n, _ in e.stage.named_parameters() if ".lora_" in n and ".default." in n}
        assert all(m.active_adapters == ["default"] for _, m in e.stage.lora_modules())
