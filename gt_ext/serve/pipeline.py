"""The `pipeline` generation backend: the model's layers run on node0 stage servers, sampling here.

    engine = PipelineEngine("smollm2-135m-instruct", PipelineTarget.from_options("serve", [ADDR], key_file))
    gen = Generator("smollm2-135m-instruct", backend="pipeline", pipeline=target)   # the usual API

The engine runs the serving decode loop like the torch engine (`Generator` calls `run` with a batch
of requests): each row is one generation session through the stages (`gt_ext.pipeline.inference`),
holding one server session per span; sampling, stop strings and stats are the serving loop's own
(`gt_ext.serve.generate.DecodeRows`), and so are streaming and the API. Rows decode concurrently:
while one session's token is in the tail, another's can be in the head. Adapters are read here (PEFT folders
the model reference resolved, `gt_ext.models.refs`) and sent to the stages by content.

This process needs the base model's tokenizer and config (and, to check that the stages serve the
same weights, the weights' fingerprint: `model_fingerprint`), never its layers.
"""

from __future__ import annotations

import asyncio
import logging
import time
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

    def __init__(self, base_model: str, target: PipelineTarget | None):
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

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def run(self, requests: list[Any], render: Any) -> Any:
        """Generator's engine call: yield (row, text piece) for a batch of requests. Each row is one
        generation session through the stages with its own adapters; its prompt goes in chunks of
        PREFILL_CHUNK tokens, then one token a step, every running row's step in flight together
        (while one row's token is in the tail, another's is in the head)."""
        import torch

        from gt_ext.serve.generate import DecodeRows, check_prompt_lengths

        t0 = time.perf_counter()
        prompts = [self.tokenize(render(r.messages)) for r in requests]
        check_prompt_lengths(requests, prompts, self.max_context)
        rows = DecodeRows(requests, prompts, self.eos_ids, self._decode, t0)
        sessions = [self.inference.session([(self.adapters[k], w) for k, w in r.adapters]) for r in requests]

        async def prefill(session: Any, ids: list[int]) -> Any:
            logits = None
            for at in range(0, len(ids), PREFILL_CHUNK):
                logits = await session.step(torch.tensor([ids[at:at + PREFILL_CHUNK]], dtype=torch.long))
            return logits

        async def prefill_all() -> list[Any]:
            return await asyncio.gather(*(prefill(s, p) for s, p in zip(sessions, prompts, strict=True)))

        async def steps(todo: dict[int, int]) -> list[Any]:
            return await asyncio.gather(*(sessions[i].step(torch.tensor([[t]], dtype=torch.long))
                                          for i, t in todo.items()))

        async def close_all() -> None:
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

        try:
            outs = self.inference.run(prefill_all())
            logits = dict(enumerate(outs))  # row -> next-token logits [V]
            step = 0
            while True:
                todo: dict[int, int] = {}
                for i in list(logits):
                    tok, piece = rows.sample(i, logits[i], step)
                    if tok is not None:
                        todo[i] = tok
                    if piece:
                        yield i, piece
                step += 1
                if not todo:
                    break
                logits = dict(zip(todo, self.inference.run(steps(todo)), strict=True))
        finally:
            try:
                self.inference.run(close_all())  # the stages' sessions would expire on their own
            except Exception as e:
                log.debug("closing generation sessions: %s", e)

    def close(self) -> None:
        """Leave the swarm."""
        self.inference.close()


@dataclass
class _ModelFacts:
    """What `_eos_ids` reads from a model, without the model."""

    generation_config: Any
    config: Any
