"""Tiny random LLaMA base folders, one per tokenizer family, with tokenizers built here.

    build_base(family, folder) -> folder    # config.json + model.safetensors + tokenizer files

Families (gt_ext.models.family): "llama-spm" (a SentencePiece BPE model with byte fallback trained
by the `sentencepiece` package, LLaMA-2 settings: no normalisation, dummy prefix, split digits),
"llama3-bpe" (a byte-level BPE trained by `tokenizers` with LLaMA-3's split regex, ignore_merges and
LLaMA-3's header tokens), "smollm-bpe" (SmolLM2's real tokenizer, shipped with the tiny test model).
"""

from __future__ import annotations

from pathlib import Path

# Multilingual text, code and odd whitespace: what a pre-tokenizer must split the same way as HF.
TEXT = ("Hello world! Grüße aus München, ça va? Привет, мир. 你好，世界。こんにちは 🦙🚀 é\n"
        "def f(x):\n\tif x  >= 10:\n        return x ** 2  # comment\n    return None\n\n\n"
        "   leading spaces, trailing tab\t\n  12345 3.14159 1,000,000 CamelCaseWord snake_case_id\r\n"
        "I'm sure they'll say 'RE you sure?' We'VE a'lL  done it.   ")
_CORPUS = [TEXT, "The witness patrols the rig and nudges idle polecats.", "Status of bead gt-12? It is done.",
           "gt peek nux; bd close gt-12 --reason done", '{"name": "Bash", "input": {"command": "gt peek"}}',
           "system user assistant tool: idle for 40 minutes, so I nudged it."] * 30
SPM_TEMPLATE = ("{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}### {{ m['role'] }}:\n"
                "{{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}### assistant:\n{% endif %}")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, rms_norm_eps=1e-5)


def _spm_tokenizer(folder: Path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS), model_prefix=str(folder / "tokenizer"), vocab_size=700, hard_vocab_limit=False,
        model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (folder / "tokenizer.vocab").unlink()
    tok = AutoTokenizer.from_pretrained(str(folder))  # converts tokenizer.model (byte-fallback BPE)
    tok.chat_template = SPM_TEMPLATE
    tok.pad_token = tok.eos_token
    return tok


def _llama3_tokenizer(folder: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from gt_ext.models.family import LLAMA3_SPLIT

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tk = Tokenizer(models.BPE(ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=900, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                      special_tokens=[("<|begin_of_text|>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  pad_token="<|end_of_text|>")
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def build_base(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random LLaMA with a `family` tokenizer, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    if family == "llama-spm":
        tok = _spm_tokenizer(folder)
    elif family == "llama3-bpe":
        tok = _llama3_tokenizer(folder)
    elif family == "smollm-bpe":
        from gt_ext.models import load_tokenizer

        tok = load_tokenizer("tiny-llama")  # SmolLM2's own tokenizer
    else:
        raise ValueError(family)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=family != "llama-spm", **TINY)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init, so greedy picks are far apart
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
