"""node0 adapters against a real node0 checkout: $NODE0_PATH, else the upstream snapshot beside the
repository (../shared/upstream/node0). node0 is never vendored here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gt_ext.errors import GtExtError

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("NODE0_PATH", str(REPO.parent / "shared" / "upstream" / "node0"))
LORA_ALL = dict(r=4, targets=["q_proj", "v_proj", "o_proj", "down_proj"])


def test_missing_checkout_is_a_one_line_error(tmp_path, monkeypatch):
    from node0_patches import load_node0

    monkeypatch.delenv("NODE0_PATH", raising=False)
    with pytest.raises(GtExtError, match="NODE0_PATH"):
        load_node0()
    with pytest.raises(GtExtError, match="not a node0 checkout"):
        load_node0(tmp_path)


def test_node0_imports_on_pypi_hivemind_and_this_torch():
    import hivemind

    from node0_patches import load_node0

    node0 = load_node0()
    assert Path(node0.__file__).resolve().is_relative_to(Path(os.environ["NODE0_PATH"]).resolve())
    import node0.server.node0_server as server  # imports hivemind.PeerID and use_hivemind_log_handler

    assert hivemind.__version__ == "1.1.12" and hasattr(server, "Node0Server")


def test_lora_stage_experts_are_registered_beside_node0s_own():
    from hivemind.moe.server.layers.custom_experts import name_to_block

    from node0_patches.experts import register_stage_experts

    classes = register_stage_experts()
    assert set(classes) == {"lm_head_lora", "lm_body_lora", "lm_tail_lora", "lm_full_lora"}
    assert "lm_body" in name_to_block and name_to_block["lm_body"] is not classes["lm_body_lora"]
    assert register_stage_experts() is classes  # registering again is a no-op


def _experts(model_dir: Path, compression: bool, subspace: Path | None):
    """Head, body and tail experts over a 4-layer model, node0's compression on or off."""
    from gt_ext.pipeline.stage import split_layers
    from gt_ext.train.config import LoraSettings
    from node0_patches.experts import expert_class, register_stage_experts, stage_arguments
    from node0_patches.server import load_subspace

    classes = register_stage_experts()
    out = []
    for span in split_layers(4, 3):
        args = stage_arguments(model_dir, span, LoraSettings(**LORA_ALL), seed=0,
                               compression_rate=4 if compression else None, subspace=subspace if compression else None)
        e = classes[expert_class(span)](args)
        if compression:
            e.load_comp(load_subspace(str(subspace)))
        out.append(e)
    return out


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (2, 10), generator=g)
    ex = torch.tensor([[0] * 4 + [1] * 6, [2] * 10])
    pos = torch.tensor([list(range(4)) + list(range(6)), list(range(10))])
    targets = torch.roll(ids, -1, 1)
    targets[:, -1] = -100
    return ids, pos, ex, torch.ones(2), targets


def _loss(experts, batch) -> torch.Tensor:
    ids, pos, ex, on, targets = batch
    x = experts[0](ids, pos, ex, on)
    x = experts[1](x, pos, ex, on)
    logp = experts[2](x, pos, ex, on, targets)
    return -logp[targets != -100].mean()


@pytest.fixture(scope="module")
def subspace_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gt_ext.models.base import build_tiny_llama
    from gt_ext.pipeline.subspace import make_subspace_model

    src = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "src", num_layers=4)
    return make_subspace_model(src, tmp_path_factory.mktemp("sub") / "model", rate=4)


def test_compression_is_lossless_and_lora_stays_in_the_subspace(subspace_model):
    """node0's compressed wire format (hidden/4 + 1 channels here) gives the loss of uncompressed
    stages; training with the LoRA delta projected into the subspace (node0's ss_regularize hook)
    stays within 1% of uncompressed training on the same steps, and an unprojected delta does not
    survive compression."""
    sub = subspace_model / "subspace.pt"
    plain = _experts(subspace_model, False, None)
    comp = _experts(subspace_model, True, sub)
    with torch.no_grad():
        wire = comp[0](*_batch(0)[:4])
        assert wire.shape == (2, 10, 64 // 4 + 1)
        assert torch.equal(wire[:, :, -1], _batch(0)[0].float())  # token ids ride in the last channel
        assert abs(float(_loss(comp, _batch(0))) - float(_loss(plain, _batch(0)))) < 1e-4

    def train(experts, project: bool) -> list[float]:
        params = [p for e in experts for p in e.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        losses = []
        for _ in range(4):
            loss = _loss(experts, _batch(0))  # one batch, learned over the steps
            opt.zero_grad()
            loss.backward()
            opt.step()
            if project:
                for e in experts:
                    e.ss_regularize()
            losses.append(float(loss.detach()))
        return losses

    free, kept = train(plain, project=False), train(comp, project=True)
    assert all(abs(a - b) / a < 0.01 for a, b in zip(free, kept, strict=True)), (free, kept)
    assert kept[-1] < kept[0]
    with torch.no_grad():  # the projected delta: compressed == uncompressed forward of the same weights
        for c, p in zip(comp, plain, strict=True):
            p.stage.load_adapter_state(c.stage.adapter_state())
        assert abs(float(_loss(comp, _batch(9))) - float(_loss(plain, _batch(9)))) < 1e-4
        # An unprojected change of a residual writer leaves the subspace: compression then loses it.
        w = dict(comp[0].stage.named_parameters())["model.layers.0.self_attn.o_proj.lora_B.default.weight"]
        w.add_(0.5 * torch.randn_like(w))
        p_w = dict(plain[0].stage.named_parameters())["model.layers.0.self_attn.o_proj.lora_B.default.weight"]
        p_w.copy_(w)
        assert abs(float(_loss(comp, _batch(9))) - float(_loss(plain, _batch(9)))) > 1e-3


def test_stage_arguments_check_lora_dropout_and_vocab(subspace_model):
    from gt_ext.pipeline.stage import Span
    from gt_ext.train.config import LoraSettings
    from node0_patches.experts import stage_arguments

    args = stage_arguments(subspace_model, Span(0, 2, 4), LoraSettings(r=4), vocab_size=49152)
    assert (args.hidden_dim, args.n_heads, args.num_hidden_layers, args.vocab_size) == (64, 4, 2, 49152)
    with pytest.raises(GtExtError, match="dropout must be 0"):
        stage_arguments(subspace_model, Span(0, 2, 4), LoraSettings(r=4, dropout=0.1))
    with pytest.raises(GtExtError, match="tokenizer has 60000 tokens"):
        stage_arguments(subspace_model, Span(0, 2, 4), LoraSettings(r=4), vocab_size=60000)
