"""The `pipeline` generation backend: the model's layers run on node0 stage servers, sampling here.

    engine = PipelineEngine("smollm2-135m-instruct", PipelineTarget.from_options("serve", [ADDR], key_file))
    gen = Generator("smollm2-135m-instruct", backend="pipeline", pipeline=target)   # the usual API

The engine is driven by the serving decode loop like the torch engine (`gt_ext.serve.scheduler.
DecodeLoop`: start / prefill / decode / finish): each row is one generation session through the
stages (`gt_ext.pipeline.inference`), holding one server session per span; sampling, stop strings
and stats are the loop's own, and so are continuous batching, streaming and the API. Rows decode concurrently:
while one session's token is in the tail, another's can be in the head. Adapters are read here (PEFT folders
the model reference resolved, `gt_ext.models.refs`) and sent to the stages by content.

This process needs the base model's tokenizer and config (and, to check that the stages serve the
same weights, the weights' fingerprint: `model_fingerprint`), never its layers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)
PREFILL_CHUNK = 256  # prompt tokens per step message (activations of hidden 576 in fp32: ~0.6 MiB)


@dataclass
class PipelineTarget:
    """Where the stages are: the pipeline run, a stage's address, the swarm key."""

    run: str
    initial_peers: list[str] = field(default_factory=list)
    key: Any = None  # gt_ext.swarm.auth.SwarmKey (None: an open swarm)

    @classmethod
    def from_options(cls, run: str | None, initial_peers: list[str] | None, key_file: str | Path | None,
                     insecure_open_swarm: bool = False) -> PipelineTarget:
        """Validated target from command-line options (`--run`, `--initial-peers`, `--swarm-key`)."""
        from gt_ext.pipeline.records import check_run
        from gt_ext.swarm.auth import SwarmKey
        from gt_ext.swarm.dht import check_initial_peers

        if not run or not initial_peers:
            raise GtExtError("--backend pipeline needs --run RUN and --initial-peers ADDR (a stage's address, "
                             "printed by `gt-ext pipeline stage`)")
        check_run(run)
        peers = check_initial_peers(initial_peers)
        key = SwarmKey.from_env_or_path(key_file)
        if key is None and not insecure_open_swarm:
            raise GtExtError("--backend pipeline needs the stages' --swarm-key FILE (or $GT_SWARM_KEY_FILE)")
        return cls(run=run, initial_peers=peers, key=key)

    @classmethod
    def for_backend(cls, backend: str, run: str | None, initial_peers: list[str] | None,
                    key_file: str | Path | None) -> PipelineTarget | None:
        """The target of `--backend pipeline`, else None; `--run`/`--initial-peers` without that
        backend are an error, not silently ignored."""
        if backend != "pipeline":
            if run or initial_peers:
                raise GtExtError("--run and --initial-peers go with --backend pipeline")
            return None
        return cls.from_options(run, initial_peers, key_file)


class PipelineEngine:
    """Serving engine over pipeline stages (see module docstring)."""

    def __init__(self, base_model: str, target: PipelineTarget | None, max_slots: int = 10):
        from transformers import GenerationConfig

        from gt_ext.models import load_tokenizer, resolve_model_dir
        from gt_ext.pipeline.inference import PipelineInference
        from gt_ext.pipeline.stage import model_fingerprint, read_config
        from gt_ext.serve.generate import _eos_ids

        if target is None:
            raise GtExtError("--backend pipeline needs --run, --initial-peers and --swarm-key")
        model_dir = resolve_model_dir(base_model)
        if not Path(model_dir).is_dir():
            raise GtExtError(f"--backend pipeline serves HF LLaMA folders; {base_model} is {model_dir}")
        self.tokenizer = load_tokenizer(str(model_dir))
        self.config = read_config(model_dir)
        try:
            gen_cfg = GenerationConfig.from_pretrained(str(model_dir))
        except OSError:
            gen_cfg = None
        self.eos_ids = _eos_ids(_ModelFacts(gen_cfg, self.config), self.tokenizer)
        self.max_context = int(getattr(self.config, "max_position_embeddings", 2048))
        try:
            base_hash = model_fingerprint(model_dir)
        except GtExtError:  # a tokenizer-only folder: the stages are trusted to agree among themselves
            base_hash = None
        self.inference = PipelineInference(target.run, target.initial_peers, target.key, base_hash=base_hash)
        if self.inference.total_layers != self.config.num_hidden_layers:
            self.inference.close()
            raise GtExtError(f"pipeline run {target.run}: its stages serve {self.inference.total_layers} layers, "
                             f"{base_model} has {self.config.num_hidden_layers}")
        self.adapters: dict[str, Any] = {}  # resolved folder -> AdapterBlob
        self.max_slots = max_slots  # concurrent generation sessions (rows of the decode loop)
        self.prefill_chunk = PREFILL_CHUNK  # the loop sends prompts in chunks of this size
        log.info("serving %s through pipeline run %s (%d spans)", base_model, target.run, len(self.inference.spans))

    # -- adapters -----------------------------------------------------------------------------------
    def add_adapter(self, path: str | Path) -> str:
        """Read an adapter folder once (sent to the stages when a request uses it)."""
        from gt_ext.models.refs import adapter_folder
        from gt_ext.pipeline.inference import AdapterBlob

        key = str(adapter_folder(path).resolve())
        if key not in self.adapters:
            blob = AdapterBlob.load(key)
            outside = [m for m in blob.weights if not m.startswith("model.layers.")
                       or int(m.split(".")[2]) >= self.config.num_hidden_layers]
            if outside:
                raise GtExtError(f"{key}: adapter targets {outside[0]}, which the pipeline's layers do not have")
            self.adapters[key] = blob
        return key

    def adapter_keys(self) -> list[str]:
        return list(self.adapters)

    # -- the decode loop -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # One generation session through the stages per row (`seq.slot`). The loop prefills prompts in
    # chunks of at most PREFILL_CHUNK tokens; a decode step sends every running row's token at once,
    # so while one session's token is in the tail, another's is in the head.
    def start(self, seq: Any) -> None:
        seq.slot = self.inference.session([(self.adapters[k], w) for k, w in seq.request.adapters])

    def prefill(self, seq: Any, ids: list[int]) -> Any:
        import torch

        return self.inference.run(seq.slot.step(torch.tensor([ids], dtype=torch.long)))

    def decode(self, seqs: list[Any], ids: list[int]) -> Any:
        import torch

        async def steps() -> list[Any]:
            return await asyncio.gather(*(s.slot.step(torch.tensor([[t]], dtype=torch.long))
                                          for s, t in zip(seqs, ids, strict=True)))

        return torch.stack(self.inference.run(steps()))  # [n, V]

    def finish(self, seq: Any) -> None:
        if seq.slot is None:
            return
        try:
            self.inference.run(seq.slot.close())  # the stages' sessions would expire on their own
        except Exception as e:
            log.debug("closing a generation session: %s", e)
        seq.slot = None

    def close(self) -> None:
        """Leave the swarm."""
        self.inference.close()


@dataclass
class _ModelFacts:
    """What `_eos_ids` reads from a model, without the model."""

    generation_config: Any
    config: Any
