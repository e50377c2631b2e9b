"""Export a training run: PEFT adapter, merged HF safetensors, GGUF (f16 + quantized), manifest.

    export.py     export_run(run_dir, to, quantized=("q8_0",)), merge_adapter, verify_export
    gguf_file.py  write_gguf(hf_dir, out_path, qtype)  (gguf.GGUFWriter, q/k permuted for llama.cpp)
"""
