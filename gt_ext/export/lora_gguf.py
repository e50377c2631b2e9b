"""A PEFT LoRA adapter as a GGUF LoRA, by llama.cpp's own `convert_lora_to_gguf.py`.

    write_lora_gguf(adapter_dir, base_hf_dir, out)   # one conversion
    lora_gguf(adapter_dir, base_model) -> Path        # cached by content, for the llama.cpp backend

The converter sits next to `convert_hf_to_gguf.py` in the folder install.sh unpacks from the pinned
llama-cpp-python sdist (`gt_ext.export.convert.converter_dir`), so its tensor names and q/k row
order are the ones the runtime expects. It runs unchanged in a child process (its gguf-py must not
meet the PyPI `gguf` in one interpreter); it needs only the base model's config.json (`--base`),
never its weights. Output type f32: adapters are small, and nothing is lost to rounding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gt_ext.errors import GtExtError
from gt_ext.paths import cache_dir

log = logging.getLogger(__name__)


def write_lora_gguf(adapter_dir: str | Path, base_hf_dir: str | Path, out: str | Path, outtype: str = "f32") -> Path:
    """Convert the PEFT adapter in `adapter_dir` (for the HF model in `base_hf_dir`) to GGUF `out`
    (written atomically). Raises `GtExtError` with the converter's last message on failure."""
    from gt_ext.export.convert import converter_dir

    adapter_dir, base_hf_dir, out = Path(adapter_dir), Path(base_hf_dir), Path(out)
    if not (base_hf_dir / "config.json").is_file():
        raise GtExtError(f"{base_hf_dir}: no config.json (the adapter's base model folder is needed)")
    script = converter_dir() / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise GtExtError(f"{script}: missing (run ./install.sh to unpack llama.cpp's converters)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([sys.executable, str(script), "--base", str(base_hf_dir), "--outfile", tmp,
                              "--outtype", outtype, str(adapter_dir)], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL, timeout=1800)
        if res.returncode != 0:
            last = ([ln for ln in res.stderr.splitlines() if ln.strip()] or ["(no output)"])[-1]
            raise GtExtError(f"{adapter_dir}: convert_lora_to_gguf.py failed: {last[-400:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def lora_gguf(adapter_dir: str | Path, base_model: str) -> Path:
    """The GGUF LoRA of `adapter_dir` on `base_model` (a known name or HF folder), converted once and
    kept in the cache under a digest of the adapter's files and the base config."""
    from gt_ext.models.base import resolve_model_dir

    adapter_dir = Path(adapter_dir)
    base_dir = Path(resolve_model_dir(base_model))
    h = hashlib.sha256()
    for f in (adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors",
              base_dir / "config.json"):
        try:
            h.update(f.read_bytes())
        except OSError as e:
            raise GtExtError(f"{f}: unreadable ({e.__class__.__name__})") from None
    out = cache_dir() / "lora-gguf" / f"{h.hexdigest()[:24]}.gguf"
    if out.is_file():
        return out
    log.info("converting adapter %s to a GGUF LoRA", adapter_dir)
    return write_lora_gguf(adapter_dir, base_dir, out)
