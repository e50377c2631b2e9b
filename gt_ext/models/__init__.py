"""Base models: the pretrained LLaMA-family models that role adapters are trained on.

    load_model("smollm2-135m-instruct")  -> (LlamaForCausalLM, tokenizer)   # real, 135M
    load_model("tiny-llama")             -> (LlamaForCausalLM, tokenizer)   # random, for unit tests
    load_model("/path/to/hf-folder")     or  load_model("/path/to/model.gguf")
    refs.resolve("witness:3")            -> ResolvedModel   # what --model REF means everywhere
"""

from gt_ext.models.base import KNOWN_MODELS, load_model, load_tokenizer, resolve_model_dir

__all__ = ["KNOWN_MODELS", "load_model", "load_tokenizer", "resolve_model_dir"]
