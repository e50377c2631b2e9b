"""Training configuration: one validated pydantic model, loaded from YAML/TOML plus `key=value` overrides.

Public API (stable; the swarm loop builds on it):

    TrainConfig                      # the whole config; sections .lora .data .optim .dpo
    load_config(path=None, overrides=())  -> TrainConfig
    apply_overrides(cfg_dict, ["optim.lr=1e-4", "lora.r=16"]) -> dict
    config_to_dict(cfg) -> dict      # JSON-able, goes into run.json

Every model forbids unknown keys, so a typo such as `optim.lrr=1` fails loudly with a one-line
`ConfigError` naming the key and where it came from. Override values are parsed as YAML scalars
(`1e-4` -> float, `true` -> bool, `[q_proj,v_proj]` -> list).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gt_ext.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Strict):
    """LoRA adapter shape (PEFT `LoraConfig`)."""

    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA scale numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                               description="linear layers that get an adapter")


class DataSettings(_Strict):
    """How examples are rendered, truncated, packed and batched."""

    max_length: int = Field(1024, ge=16, description="longest example in tokens; longer ones are truncated and counted")
    pack: bool = Field(True, description="pack several examples into one row (block-diagonal attention)")
    pack_length: int = Field(1024, ge=16, description="row length when packing")
    batch_size: int = Field(4, ge=1, description="rows (packed) or examples (unpacked) per micro-batch")
    seed: int = Field(0, description="shuffle order of the batches")
    max_train_examples: int | None = Field(None, ge=1, description="use at most this many training examples")
    max_val_examples: int | None = Field(256, ge=1, description="validate on at most this many examples")


class OptimSettings(_Strict):
    """AdamW + warmup/cosine schedule + accumulation + clipping."""

    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps, then cosine decay")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine ends at lr * this")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")


class DpoSettings(_Strict):
    """DPO (sigmoid loss); reference log-probs come from the same model with adapters disabled."""

    beta: float = Field(0.1, gt=0, description="DPO temperature (strength of the preference)")
    precompute_ref: bool = Field(False, description="compute reference log-probs once before training")


class TrainConfig(_Strict):
    """Everything a training run needs besides the corpus path and the output folder."""

    base_model: str = Field("smollm2-135m-instruct", description="smollm2-135m-instruct, tiny-llama, an HF folder or a .gguf")
    mode: Literal["sft", "dpo"] = Field("sft", description="sft (chat examples) or dpo (preference pairs)")
    max_steps: int = Field(200, ge=1, description="optimizer steps")
    max_time_s: float | None = Field(None, gt=0, description="stop (with a checkpoint) after this many wall seconds")
    max_cpu_s: float | None = Field(
        None, gt=0, description="stop after this much process CPU time (10 min on 2 cores = 1200), for shared machines"
    )
    eval_every: int = Field(50, ge=0, description="validation loss every N steps (0: only start and end)")
    checkpoint_every: int = Field(50, ge=0, description="checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    max_nonfinite: int = Field(5, ge=1, description="stop after this many NaN/inf steps in a row")
    seed: int = Field(0, description="torch / Python RNG seed")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="base weights and compute dtype; auto: bfloat16 on CUDA, float32 on CPU (adapters stay float32)")
    device: str = Field("auto", description="auto (CUDA when there is one, else CPU), cpu, cuda or cuda:N")
    attention: Literal["auto", "varlen", "segments", "dense"] = Field(
        "auto", description="packed attention: varlen (CUDA flash), segments (SDPA per example), dense (T x T mask)")
    fused: bool = Field(True, description="fused LoRA linears and RMSNorm (same function, fewer kernels)")
    gradient_checkpointing: bool = Field(False, description="recompute decoder layers in backward (less memory)")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each decoder layer; auto: on CUDA with varlen attention (falls back to eager on errors)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    role_adapter: str | None = Field(
        None, description="role adapter a task adapter trains on top of: registry name:ver or an adapter/run folder")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    dpo: DpoSettings = Field(default_factory=DpoSettings)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: use .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {path}: cannot parse: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def _known_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` applied; unknown keys raise `ConfigError`."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        model: type[BaseModel] = TrainConfig
        node = out
        for i, part in enumerate(parts):
            if part not in model.model_fields:
                where = ".".join(parts[:i]) or "top level"
                raise ConfigError(
                    f"override {item!r}: unknown key {part!r} in {where} (known: {', '.join(_known_keys(model))})"
                )
            ann = model.model_fields[part].annotation
            if i == len(parts) - 1:
                try:
                    node[part] = yaml.safe_load(raw) if raw.strip() else None
                except yaml.YAMLError:
                    node[part] = raw
            else:
                if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
                node = node.setdefault(part, {})
                model = ann
    return out


def _validation_message(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "top level"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown config key {loc!r}"
    return f"{source}: {loc}: {err['msg']}"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load and validate a config: defaults, then the file (YAML/TOML), then `key=value` overrides."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        data = _read_file(Path(path))
        source = f"config {path}"
    try:
        # Validate the file alone first so an error names the file rather than the overrides.
        TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_validation_message(e, source)) from None
    merged = apply_overrides(data, list(overrides))
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_validation_message(e, "overrides")) from None


def config_keys() -> list[tuple[str, Any, str]]:
    """Every config key as (dotted.key, default, description), sections flattened, in model order."""
    out: list[tuple[str, Any, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = f.get_default(call_default_factory=True)
            out.append((prefix + name, default, f.description or ""))

    walk(TrainConfig, "")
    return out


def config_help() -> str:
    """The config keys with their defaults, one a line (for `gt-ext train --help`)."""
    def show(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(str(x) for x in v) + "]"
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    rows = [(f"{k}={show(d)}", desc) for k, d, desc in config_keys()]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {desc}".rstrip() for a, desc in rows)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-able dict of a config (tuples become lists)."""
    return cfg.model_dump(mode="json")
