"""`evaluate(model_ref, suite, k)`: run a suite against a model and score it (see docs/CONTRACTS.md).

Model refs:
- `base:<name>` (or a bare known base-model name): the base model alone;
- a run or export folder (`run.json` / `manifest.json` naming `base_model`; `merged/` is used when
  present, else `adapter/` on the base);
- a registry ref `NAME[:VER]` (via `gt_ext.registry.Registry`, when that package is installed).

Generation goes through `gt_ext.serve.generate.Generator` (batched); `_fallback_generator` is a thin
transformers `generate` path used only when the serving package is not importable.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.evals import pfengine, scoring
from gt_ext.evals import suite as suite_mod
from gt_ext.paths import home_dir

log = logging.getLogger(__name__)

BATCH = 8  # prompts decoded together; 8 short prompts fit easily and keep both cores busy
ENGINES = ("auto", "ours", "promptfoo")


def _unavailable(task: Any, engine: str) -> str | None:
    """Why a task cannot be graded here at all (None = it can)."""
    why = getattr(task, "unavailable", lambda: None)()
    if why or not hasattr(task, "test"):
        return why
    why = pfengine.ungradable(task.test)
    if why:
        return why
    beyond = sorted({a["type"] for a in task.test.asserts if pfengine.base_type(str(a["type"])) not in pfengine.CORE})
    if beyond and engine == "ours":
        return f"assertion {beyond[0]!r} is graded by the real promptfoo (--engine auto), not by --engine ours"
    if (beyond or engine == "promptfoo") and pfengine.promptfoo_binary() is None:
        what = f"assertion {beyond[0]!r}" if beyond else "--engine promptfoo"
        return f"{what} needs the real promptfoo, which is not installed (./install.sh, or set PROMPTFOO_BIN)"
    return None


@dataclass
class ModelRef:
    """A resolved model: what to load, and where its eval results go."""

    ref: str
    base_model: str
    adapters: list[tuple[str, float]] = field(default_factory=list)
    out_dir: Path | None = None
    registry_ref: str | None = None
    role: str | None = None


@dataclass
class EvalResult:
    """Scores of one model on one suite (`to_dict` is the contract's JSON)."""

    suite: str
    model: str
    role: str | None
    k: int
    tasks: list[scoring.TaskResult]
    categories: dict[str, dict[str, Any]]
    composite: float
    pass_k: dict[str, Any]
    gate: dict[str, Any]
    seconds: float = 0.0
    contamination: dict[str, Any] | None = None
    written_to: str | None = None
    system_prompt: str | None = None
    splits: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        """A run of the whole suite (no --limit, no --split): the only kind that can gate."""
        return bool(self.run.get("full"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON written as `eval-<suite>.json` and stored by the registry."""
        d = {
            "suite": self.suite,
            "model": self.model,
            "role": self.role,
            "k": self.k,
            "categories": self.categories,
            "composite": self.composite,
            "pass_k": self.pass_k,
            "gate": self.gate,
            "skipped": [t.id for t in self.tasks if t.skipped],
            "seconds": round(self.seconds, 1),
            "system_prompt": self.system_prompt,
            "splits": self.splits,
            "run": self.run,
            "tasks": [t.to_dict() for t in self.tasks],
        }
        if self.contamination is not None:
            d["contamination"] = self.contamination
        return d


def result_filename(result: dict[str, Any]) -> str:
    """`eval-<suite>.json` for a full run, `eval-<suite>-partial.json` for a --limit/--split run,
    so a smoke run never replaces the full result next to a model."""
    suite = re.sub(r"[^A-Za-z0-9._-]", "_", str(result.get("suite") or "default"))
    return f"eval-{suite}.json" if (result.get("run") or {}).get("full") else f"eval-{suite}-partial.json"


def model_file_hashes(model: ModelRef) -> dict[str, str]:
    """sha256 of every weight file the model was loaded from that lies in its own folder, keyed by
    path relative to that folder (the keys of an export/registry manifest), so a result can later
    be checked against the files of the model it claims to score. Empty for `base:` models."""
    if model.out_dir is None or model.ref.startswith("base:"):
        return {}
    from gt_ext.registry.artifacts import sha256_file

    root = Path(model.out_dir).resolve()
    used = [Path(model.base_model)] + [Path(a) for a, _ in model.adapters]
    out: dict[str, str] = {}
    for d in used:
        d = d.resolve()
        if not d.is_dir() or not d.is_relative_to(root):
            continue
        for f in sorted(d.rglob("*")):
            if f.is_file():
                out[f.relative_to(root).as_posix()] = sha256_file(f)
    return out


# ------------------------------------------------------------------------------------ model refs


def _read_json(p: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise GtExtError(f"{p}: unreadable JSON ({e.__class__.__name__})") from e


def _parent_adapter(folder: Path, meta: dict[str, Any]) -> list[tuple[str, float]]:
    """A task adapter was trained on top of its role adapter (run.json `parent`): stack that first."""
    parent = meta.get("parent")
    if not parent:
        return []
    if not (Path(parent) / "adapter_config.json").is_file():
        raise GtExtError(f"{folder}: trained on top of role adapter {parent}, which is gone (no adapter_config.json)")
    return [(str(parent), 1.0)]


def resolve_model(ref: str) -> ModelRef:
    """Resolve a model ref (see module doc) to a base model, adapters and a results folder."""
    from gt_ext.models import KNOWN_MODELS

    if not ref:
        raise GtExtError("--model is empty: give base:<model>, a run/export folder or NAME[:VER]")
    if ref.startswith("base:") or ref in KNOWN_MODELS:
        name = ref.split(":", 1)[1] if ref.startswith("base:") else ref
        if not name:
            raise GtExtError(f"model ref {ref!r}: base: needs a model name")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
        return ModelRef(ref=f"base:{name}", base_model=name, out_dir=home_dir() / "evals" / f"base-{slug}")
    p = Path(ref).expanduser()
    if p.is_dir():
        meta: dict[str, Any] = {}
        for fname in ("manifest.json", "run.json"):
            if (p / fname).is_file():
                meta = {**_read_json(p / fname), **meta}
        base = meta.get("base_model")
        if not base:
            raise GtExtError(f"{p}: not a run or export folder (no run.json/manifest.json with base_model)")
        if (p / "merged" / "config.json").is_file():
            return ModelRef(ref=str(p), base_model=str(p / "merged"), out_dir=p, role=meta.get("role"))
        if (p / "adapter" / "adapter_config.json").is_file():
            return ModelRef(ref=str(p), base_model=str(base), adapters=[*_parent_adapter(p, meta), (str(p / "adapter"), 1.0)],
                            out_dir=p, role=meta.get("role"))
        raise GtExtError(f"{p}: no adapter/ (adapter_config.json) or merged/ model in this folder")
    if re.fullmatch(r"[A-Za-z0-9_.-]+(:v?\d+)?", ref):
        try:
            from gt_ext.registry import Registry
        except ImportError:
            raise GtExtError(f"model ref {ref!r}: not a folder, and the model registry is not installed") from None
        with Registry.open() as reg:
            rec = reg.get(ref)
        if rec.merged_dir is not None and (Path(rec.merged_dir) / "config.json").is_file():
            base, adapters = str(rec.merged_dir), []
        elif rec.adapter_dir is not None and Path(rec.adapter_dir).is_dir():
            base, adapters = str(rec.base_model), [(str(rec.adapter_dir), 1.0)]
        else:
            base, adapters = str(rec.base_model), []
        return ModelRef(ref=rec.ref, base_model=base, adapters=adapters, out_dir=Path(rec.path),
                        registry_ref=rec.ref, role=rec.role)
    raise GtExtError(f"model ref {ref!r}: not base:<model>, an existing folder, or NAME[:VER]")


# ------------------------------------------------------------------------------------ generation

GenerateFn = Callable[[list[list[dict[str, str]]], list[dict[str, Any]]], list[str]]


def make_generator(model: ModelRef) -> Any:
    """The serving Generator for a model (base + its adapters), loaded once."""
    from gt_ext.serve.generate import Generator

    return Generator(model.base_model, adapters=model.adapters)


def make_generate(model: ModelRef, generator: Any = None) -> GenerateFn:
    """Return `fn(messages_batch, sampling_batch) -> texts` for the model (loaded once).

    After each call `fn.last_meta` holds, per request, its measured `latency_ms` (from the start of
    the batch to its last token) and its `tokens` (prompt + completion); `fn.generator` is the
    Generator, for the real-promptfoo engine to serve."""
    try:
        from gt_ext.serve.params import SamplingParams
    except ImportError:
        log.warning("gt_ext.serve.generate not available; using the transformers fallback")
        return _fallback_generator(model)

    gen = generator if generator is not None else make_generator(model)

    def run(batch: list[list[dict[str, str]]], params: list[dict[str, Any]]) -> list[str]:
        reqs = [gen.request(m, SamplingParams(**p)) for m, p in zip(batch, params, strict=True)]
        texts = [""] * len(reqs)
        t0 = time.perf_counter()
        done = [t0] * len(reqs)
        for i, piece in gen.stream_batch(reqs):
            texts[i] += piece
            done[i] = time.perf_counter()
        run.last_meta = [{"latency_ms": round(1000 * (d - t0)), "tokens": r.stats.prompt_tokens + r.stats.completion_tokens}
                         for d, r in zip(done, reqs, strict=True)]
        return texts

    run.generator = gen
    run.last_meta = []
    return run


class FnGenerator:
    """A `GenerateFn` seen as a serving Generator (request / stream_batch), so a test's stand-in
    model can also be served to the real promptfoo. Tokens are counted as words."""

    backend = "function"

    def __init__(self, fn: GenerateFn):
        self.fn = fn

    def request(self, messages: list[dict[str, str]], params: Any = None, adapters: Any = None) -> Any:
        from gt_ext.serve.generate import Request, check_messages
        from gt_ext.serve.params import SamplingParams

        return Request(messages=check_messages(messages), params=(params or SamplingParams()).validate())

    def stream_batch(self, requests: list[Any]) -> Any:
        params = [{"max_new_tokens": r.params.max_new_tokens, "temperature": r.params.temperature,
                   "top_p": r.params.top_p, "seed": r.params.seed} for r in requests]
        for i, (r, text) in enumerate(zip(requests, self.fn([r.messages for r in requests], params), strict=True)):
            r.stats.prompt_tokens = sum(len(str(m["content"]).split()) for m in r.messages)
            r.stats.completion_tokens = len(text.split())
            r.stats.finish_reason = "stop"
            yield i, text


def _fallback_generator(model: ModelRef) -> GenerateFn:
    """transformers `generate`, one prompt at a time (only while the serving package is missing)."""
    import torch

    from gt_ext.models import load_model

    m, tok = load_model(model.base_model)
    if model.adapters:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, model.adapters[0][0]).eval()

    def run(batch: list[list[dict[str, str]]], params: list[dict[str, Any]]) -> list[str]:
        outs = []
        for msgs, p in zip(batch, params, strict=True):
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            if p.get("seed") is not None:
                torch.manual_seed(p["seed"])
            sample = float(p.get("temperature", 0)) > 0
            with torch.inference_mode():
                gen = m.generate(**ids, max_new_tokens=p["max_new_tokens"], do_sample=sample,
                                 temperature=p.get("temperature") if sample else None,
                                 top_p=p.get("top_p") if sample else None, pad_token_id=tok.pad_token_id)
            outs.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return outs

    return run


# ------------------------------------------------------------------------------------ evaluation


def suite_system_prompt(st: suite_mod.EvalSuite) -> str | None:
    """The system turn a suite asks for in suite.yaml `system_prompt`: `role` = the role's system
    turn, the same text the corpus gives every training example of that role (so a role model is
    scored as it was trained; the base model gets the same turn, so the comparison stays fair); any
    other string is used as it is; absent = none (a promptfoo suite from elsewhere runs unchanged)."""
    want = st.meta.get("system_prompt")
    if not want:
        return None
    if want == "role":
        if not st.role:
            raise GtExtError(f"suite {st.name}: system_prompt: role needs a `role` in suite.yaml")
        from gt_ext.corpus.tags import system_prompt

        return system_prompt(st.role)
    return str(want)


def with_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """`messages` with `system` as the first turn, unless there is none or the task brings its own."""
    if not system or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def evaluate(
    model_ref: str | ModelRef,
    suite: str | Path | suite_mod.EvalSuite,
    k: int = 1,
    *,
    config: str | Path | dict[str, Any] | None = None,
    generate: GenerateFn | None = None,
    corpus: str | Path | None = None,
    max_overlap: float | None = None,
    limit: int | None = None,
    split: str | None = None,
    write: bool = True,
    progress: bool = False,
    engine: str = "auto",
    grader: str | None = None,
) -> EvalResult:
    """Run `suite` on the model `k` times per task, score it and write `eval-<suite>.json`.

    `generate` replaces the model (tests); `corpus` turns on the contamination guard (tasks whose
    prompts overlap the corpus more than `max_overlap` are refused and reported); `limit` keeps the
    first N tasks and `split` one split (dev/heldout): both make a partial run, recorded as such
    (`run.full` false, written as `eval-<suite>-partial.json`) and never used by the deploy gate.
    `engine`: `auto` grades the core promptfoo assertions in process and sends tests with any other
    assertion through the real promptfoo (gt_ext.evals.pfengine); `ours` grades in process only
    (other assertions leave their test ungraded); `promptfoo` sends every promptfoo test there.
    `grader`: the model for model-graded assertions (default: the config's `grader`).
    """
    if engine not in ENGINES:
        raise GtExtError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not isinstance(k, int) or k < 1:
        raise GtExtError(f"--k must be an integer >= 1, got {k!r}")
    if limit is not None and limit < 1:
        raise GtExtError(f"--limit must be >= 1, got {limit}")
    t0 = time.perf_counter()
    model = model_ref if isinstance(model_ref, ModelRef) else resolve_model(model_ref)
    spec = str(suite.root if isinstance(suite, suite_mod.EvalSuite) else suite)
    st = suite if isinstance(suite, suite_mod.EvalSuite) else suite_mod.load(suite)
    cfg = config if isinstance(config, dict) else scoring.load_config(config)
    selected = st.select(split)
    tasks = list(selected[:limit] if limit else selected)
    full = len(tasks) == len(st.tasks)

    contamination = None
    if corpus is not None:
        from gt_ext.evals import contamination as contam

        report = contam.check_tasks(tasks, corpus, max_overlap=max_overlap)
        contamination = report.to_dict()
        refused = set(report.refused)
        tasks = [t for t in tasks if t.id not in refused]
        if refused:
            log.warning("contamination guard refused %d task(s): %s", len(refused), ", ".join(sorted(refused)))
        if not tasks:
            raise GtExtError(f"contamination guard refused every task of suite {st.name} (corpus {corpus})")

    system = suite_system_prompt(st)
    results = {t.id: scoring.TaskResult(id=t.id, category=t.category, scenario=getattr(t, "scenario", None),
                                        split=st.split_of(t)) for t in tasks}
    # Tasks that cannot run here (a sandbox without bd, an assertion only an outside service can
    # grade) are skipped with the reason, never failed.
    missing = {t.id: why for t in tasks if (why := _unavailable(t, engine))}
    for tid, why in missing.items():
        results[tid].samples = [scoring.Sample(False, 0.0, "", f"skipped: {why}", skipped=True)] * k
        log.warning("task %s skipped: %s", tid, why)
    tasks_all = tasks
    tasks = [t for t in tasks if t.id not in missing]
    # promptfoo tasks whose assertions our grader does not grade go to the real promptfoo.
    via_promptfoo = [t for t in tasks if hasattr(t, "test") and (engine == "promptfoo" or pfengine.needs_promptfoo(t.test))]
    tasks = [t for t in tasks if t not in via_promptfoo]
    price = float(cfg.get("cost_per_token", 0.0))
    gen = generate or make_generate(model)
    grader_ref = None
    if via_promptfoo:
        generator = getattr(gen, "generator", None) or FnGenerator(gen)
        got, grader_ref = pfengine.run(via_promptfoo, model, generator, k, system, st.max_new_tokens,
                                       cfg.get("sampling", {}), price, grader or cfg.get("grader"), make_generator)
        for t in via_promptfoo:
            results[t.id].samples = got[t.id]
    samp = cfg.get("sampling", {})
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks) * k, desc=f"eval {st.name}", unit="task")
    try:
        for s in range(k):
            for start in range(0, len(tasks), BATCH):
                batch = tasks[start:start + BATCH]
                ready: list[tuple[int, Any, list[dict[str, str]]]] = []
                try:
                    for i, t in enumerate(batch):
                        try:
                            ready.append((i, t, with_system(t.prepare(), system)))
                        except GtExtError as e:
                            # A sandbox whose setup fails says nothing about the model: skip it.
                            log.warning("task %s: setup failed: %s", t.id, e)
                            t.cleanup()
                            results[t.id].samples.append(
                                scoring.Sample(False, 0.0, "", f"skipped: setup failed: {e}", skipped=True))
                    params = [
                        {"max_new_tokens": st.max_new_tokens}
                        if k == 1
                        else {"max_new_tokens": st.max_new_tokens, "temperature": float(samp.get("temperature", 0.7)),
                              "top_p": float(samp.get("top_p", 0.95)), "seed": 1000 * s + start + i}
                        for i, _, _ in ready
                    ]
                    t_batch = time.perf_counter()
                    outs = gen([m for _, _, m in ready], params) if ready else []
                    wall_ms = round(1000 * (time.perf_counter() - t_batch))
                    metas = list(getattr(gen, "last_meta", None) or [])
                    for j, ((_, t, _), out) in enumerate(zip(ready, outs, strict=True)):
                        m = metas[j] if j < len(metas) else {"latency_ms": wall_ms, "tokens": None}
                        tokens = m.get("tokens")
                        cost = price * tokens if tokens is not None else (0.0 if price == 0 else None)
                        results[t.id].samples.append(t.grade(out, {"latency_ms": m.get("latency_ms"), "cost": cost}))
                finally:
                    for _, t, _ in ready:
                        t.cleanup()
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

    task_results = [results[t.id] for t in tasks_all]
    cats = scoring.categories(task_results)
    comp = scoring.composite(cats, cfg["weights"])
    pk = scoring.pass_k(task_results, k)
    role = st.role or model.role
    verdict = scoring.gate(comp, cats, pk, scoring.thresholds_for(cfg, role))
    run = {
        "producer": "gt-ext eval run",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "suite_spec": spec,
        "suite_hash": suite_mod.suite_hash(st.root),
        "suite_tasks": len(st.tasks),
        "run_tasks": len(tasks_all),
        "limit": limit,
        "split": split if split not in (None, "all") else None,
        "full": full,
        "refused": len(contamination.get("refused", [])) if contamination else 0,
        "model_files": model_file_hashes(model),
    }
    run["engines"] = dict(Counter(s.meta.get("engine", "none") for t in task_results for s in t.samples))
    run["grader"] = grader_ref
    run["cost_per_token"] = price
    res = EvalResult(suite=st.name, model=model.ref, role=role, k=k, tasks=task_results, categories=cats,
                     composite=comp, pass_k=pk, gate=verdict, seconds=time.perf_counter() - t0,
                     contamination=contamination, system_prompt=system,
                     splits=scoring.split_scores(task_results, cfg["weights"]), run=run)
    if not full:
        log.warning("partial run (%d of %d tasks%s): recorded as such, never used by the deploy gate",
                    len(tasks), len(st.tasks), f", split {split}" if run["split"] else "")
    if write and model.registry_ref:
        # The registry stores the result and writes it into the version folder.
        from gt_ext.registry import Registry

        with Registry.open() as reg:
            rec = reg.record_eval(model.registry_ref, res.to_dict())
        res.written_to = str(Path(rec.path) / result_filename(res.to_dict()))
    elif write and model.out_dir is not None:
        target = Path(model.out_dir) / result_filename(res.to_dict())
        atomic_write_json(target, res.to_dict())
        res.written_to = str(target)
    return res
