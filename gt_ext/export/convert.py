"""GGUF files through llama.cpp's own converter (`convert_hf_to_gguf.py`).

    write_ggufs(hf_dir, {"f16": path, "q8_0": path}, name=None)   # one converter process, atomic files
    converter_dir() -> Path                                          # where install.sh put the converter

The converter, its `conversion/` package and the matching `gguf-py` come from the pinned
llama-cpp-python sdist (install.sh unpacks them into the cache; they are never committed). It knows
every LLaMA-family variant llama.cpp runs: q/k row permutation, RoPE scaling (LLaMA-3.1's
`rope_freqs`), tied embeddings, SentencePiece vocabularies with scores and byte-fallback tokens,
byte-level BPE with merges, special and control tokens, the chat template. It recognises a BPE
pre-tokenizer by hashing the encoding of a test string; for a tokenizer it does not list, the
pre-tokenizer comes from the structure of tokenizer.json (`gt_ext.models.family`), see
`llamacpp_convert.py`, which runs in its own process (the converter's gguf-py is newer than the
`gguf` package on PyPI and must not meet it in one interpreter).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gt_ext.errors import GtExtError
from gt_ext.paths import cache_dir

log = logging.getLogger(__name__)

QTYPES = ("f32", "f16", "bf16", "q8_0")
LLAMA_CPP_VERSION = "0.3.36"  # the llama-cpp-python release install.sh builds and takes the converter from


def converter_dir() -> Path:
    """The unpacked converter (install.sh: `$GT_EXT_CACHE/llama.cpp-convert-<version>`)."""
    d = cache_dir() / f"llama.cpp-convert-{LLAMA_CPP_VERSION}"
    if not (d / "convert_hf_to_gguf.py").is_file():
        raise GtExtError(f"GGUF export needs llama.cpp's converter in {d} (run ./install.sh)")
    return d


def write_ggufs(hf_dir: str | Path, outputs: dict[str, Path], name: str | None = None) -> dict[str, Path]:
    """Convert the HF folder `hf_dir` into one GGUF file per type in `outputs` ({qtype: path}).

    Each file is written to a temp name next to its target and renamed into place only when the
    whole conversion succeeded; a failure raises `GtExtError` with the converter's last words.
    """
    from gt_ext.models.family import check_architecture, tokenizer_family

    hf_dir = Path(hf_dir)
    for q in outputs:
        if q not in QTYPES:
            raise GtExtError(f"GGUF type {q!r} not supported: use one of {', '.join(QTYPES)}")
    check_architecture(hf_dir)
    if tokenizer_family(hf_dir) is None:
        raise GtExtError(f"{hf_dir}: tokenizer family not recognised (SentencePiece, or byte-level BPE with the "
                         "LLaMA-3, SmolLM or GPT-2 splitting rule): llama.cpp would tokenize differently")
    tmps: dict[str, Path] = {}
    try:
        for q, out in outputs.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            tmps[q] = Path(tmp)
        cmd = [sys.executable, "-m", "gt_ext.export.llamacpp_convert", str(converter_dir()), str(hf_dir),
               "--name", name or hf_dir.name, *[f"{q}={p}" for q, p in tmps.items()]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                            os.environ.get("PYTHONPATH", "")])}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            tail = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()][-3:]
            raise GtExtError(f"llama.cpp converter failed on {hf_dir}: {' | '.join(tail)[-600:]}")
        for q, out in outputs.items():
            os.replace(tmps[q], out)
    finally:
        for t in tmps.values():
            t.unlink(missing_ok=True)
    return outputs
