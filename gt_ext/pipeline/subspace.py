"""A base model whose activations node0 can compress without loss, and its subspace file.

node0 sends a stage's output as k = hidden/rate coordinates in a fixed orthonormal basis `rcv`
[hidden, k] after subtracting a fixed per-token embedding F[token], plus the token id (see
node0_patches.experts). That is lossless only when the residual stream minus F[token] lies in
span(rcv), which is how node0 pretrains its models. A stock LLaMA is not like that;
`make_subspace_model` makes one that is, from any LLaMA folder:

    E'  = E P + F          token embedding (P = rcv rcv^T)
    Wo' = P Wo, Wd' = P Wd  every layer's attention output and MLP down projection

and writes the new HF folder plus `subspace.pt` ({"rcv", "fixed_tok_weight"}, node0's format).
The new model is a different (worse) model than its source: it is for tests, benchmarks and for
checking the wire format, not a way to compress a pretrained model's activations for free.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from gt_ext.errors import GtExtError

SUBSPACE_FILE = "subspace.pt"


def make_subspace_model(src: str | Path, out: str | Path, rate: int, seed: int = 0) -> Path:
    """Write `out` (HF folder + subspace.pt) from the LLaMA in `src` (see module docstring)."""
    from safetensors.torch import load_file, save_file

    from gt_ext.pipeline.stage import read_config

    src, out = Path(src), Path(out)
    cfg = read_config(src)
    h = cfg.hidden_size
    k = int(h // rate)
    if rate < 1 or k < 1:
        raise GtExtError(f"compression rate {rate}: need 1 <= rate <= hidden size ({h})")
    if not (src / "model.safetensors").is_file():
        raise GtExtError(f"{src}: make_subspace_model reads a single model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    rcv, _ = torch.linalg.qr(torch.randn(h, k, generator=gen))  # orthonormal columns [h, k]
    proj = rcv @ rcv.T
    state = load_file(str(src / "model.safetensors"))
    emb = state["model.embed_tokens.weight"].float()
    fixed = torch.randn(emb.shape, generator=gen) * emb.std()
    state["model.embed_tokens.weight"] = (emb @ proj + fixed).to(state["model.embed_tokens.weight"].dtype)
    for name in list(state):
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            w = state[name]
            state[name] = (proj @ w.float()).to(w.dtype).contiguous()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "CHECKSUM"):
            shutil.copy2(f, out / f.name)
    save_file({n: t.contiguous() for n, t in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"rcv": rcv.contiguous(), "fixed_tok_weight": fixed.contiguous()}, out / SUBSPACE_FILE)
    return out
