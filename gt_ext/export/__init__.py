"""Export a training run: PEFT adapter, merged HF safetensors, GGUF (f16 + quantized), manifest.

    export.py     export_run(run_dir, to, quantized=("q8_0",)), merge_adapter, verify_export
    convert.py    write_ggufs(hf_dir, {qtype: path})  (llama.cpp's own convert_hf_to_gguf.py, from the
                  pinned llama-cpp-python sdist; every tokenizer family, see gt_ext.models.family)
"""
