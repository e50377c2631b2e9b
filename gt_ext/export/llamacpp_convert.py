"""Run llama.cpp's convert_hf_to_gguf.py, one process, one or more output types.

    python -m gt_ext.export.llamacpp_convert CONVERTER_DIR HF_DIR --name NAME QTYPE=OUT [QTYPE=OUT ...]

The converter is used unchanged except for one fallback: when its table of known BPE tokenizers
(hashes of how each encodes a test string) has no entry for this tokenizer, the pre-tokenizer is
taken from the structure of tokenizer.json (`gt_ext.models.family.llama_cpp_pre`): a new
vocabulary with LLaMA-3's, SmolLM's or GPT-2's splitting rule is split the same way by llama.cpp.
Started by `gt_ext.export.convert.write_ggufs`; not meant to be imported.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    conv_dir, hf_dir = Path(argv[0]), argv[1]
    rest = argv[2:]
    name = rest[rest.index("--name") + 1] if "--name" in rest else Path(hf_dir).name
    outputs = [a.split("=", 1) for a in rest if "=" in a and not a.startswith("--")]
    # The converter's own gguf-py and conversion/ package, before anything else can import a gguf.
    sys.path[:0] = [str(conv_dir), str(conv_dir / "gguf-py")]
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", conv_dir / "convert_hf_to_gguf.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)

    import conversion.base as base

    from gt_ext.models.family import llama_cpp_pre

    known_pre = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return known_pre(self, tokenizer)
        except NotImplementedError:
            pre = llama_cpp_pre(self.dir_model)
            if pre is None or pre == "default":
                raise
            logging.getLogger("gt-ext").warning("tokenizer not in llama.cpp's table; pre-tokenizer %r from "
                                                "the structure of its tokenizer.json", pre)
            return pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    for qtype, out in outputs:
        sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", qtype, "--model-name", name]
        convert.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
