"""`evaluate(model_ref, suite, k)`: run a suite against a model and score it (see docs/CONTRACTS.md).

Model refs mean what they mean everywhere (`gt_ext.models.refs.resolve`): `base:<name>` or a known
base-model name, a run or export folder (its `merged/` when there is one, else the adapter stack on
the base, a task adapter's role adapter first), a GGUF file, or a registry ref `NAME[:VER]`.
Results go next to the model: the registry version (through the registry), the run/export folder,
or `$GT_EXT_HOME/evals/base-<name>/` for a base model.

Generation goes through `gt_ext.serve.generate.Generator` (batched), the path serving uses.
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
from gt_ext.digest import sha256_file
from gt_ext.errors import GtExtError
from gt_ext.evals import patrol_report, pfengine, provenance, scoring
from gt_ext.evals import suite as suite_mod
from gt_ext.models.refs import ResolvedModel, resolve

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
    patrol: dict[str, Any] | None = None  # patrol suites: per-step model vs baselines
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
        if self.patrol is not None:
            d["patrol"] = self.patrol
        return d


def result_filename(result: dict[str, Any]) -> str:
    """`eval-<suite>.json` for a full run, `eval-<suite>-partial.json` for a --limit/--split run,
    so a smoke run never replaces the full result next to a model; `-constrained` marks a run with
    constrained decoding (`evaluate(constrain=True)`)."""
    suite = re.sub(r"[^A-Za-z0-9._-]", "_", str(result.get("suite") or "default"))
    run = result.get("run") or {}
    tag = "-constrained" if run.get("decoding") == "constrained" else ""
    return f"eval-{suite}{tag}.json" if run.get("full") else f"eval-{suite}{tag}-partial.json"


def model_file_hashes(model: ResolvedModel) -> dict[str, str]:
    """sha256 of every weight file the model was loaded from that lies in its own folder, keyed by
    path relative to that folder (the keys of an export/registry manifest), so a result can later
    be checked against the files of the model it claims to score. Empty for `base:` models."""
    if model.results_dir is None or model.ref.startswith("base:"):
        return {}
    root = Path(model.results_dir).resolve()
    base, adapters = model.torch_weights()
    used = [Path(base)] + [Path(a) for a, _ in adapters]
    out: dict[str, str] = {}
    for d in used:
        d = d.resolve()
        if not d.is_dir() or not d.is_relative_to(root):
            continue
        for f in sorted(d.rglob("*")):
            if f.is_file():
                out[f.relative_to(root).as_posix()] = sha256_file(f)
    return out


# ------------------------------------------------------------------------------------ generation

GenerateFn = Callable[[list[list[dict[str, str]]], list[dict[str, Any]]], list[str]]


def make_generator(model: ResolvedModel) -> Any:
    """The serving Generator for a model (its merged weights, else base + adapter stack), loaded once."""
    from gt_ext.serve.generate import Generator

    base, adapters = model.torch_weights()
    return Generator(base, adapters=adapters)


def make_generate(model: ResolvedModel, generator: Any = None) -> GenerateFn:
    """Return `fn(messages_batch, sampling_batch) -> texts` for the model (loaded once).

    After each call `fn.last_meta` holds, per request, its measured `latency_ms` (from the start of
    the batch to its last token) and its `tokens` (prompt + completion); `fn.generator` is the
    Generator, for the real-promptfoo engine to serve."""
    from gt_ext.serve.params import SamplingParams

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
    max_context = 1 << 20  # a function has no context window; the API's limits still apply

    def __init__(self, fn: GenerateFn):
        self.fn = fn

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt size in words (the unit this stand-in counts in)."""
        return sum(len(str(m["content"]).split()) for m in messages)

    def request(self, messages: list[dict[str, str]], params: Any = None, adapters: Any = None) -> Any:
        from gt_ext.serve.generate import Request, check_messages
        from gt_ext.serve.params import SamplingParams

        return Request(messages=check_messages(messages), params=(params or SamplingParams()).validate())

    def stream_batch(self, requests: list[Any]) -> Any:
        params = [{"max_new_tokens": r.params.max_new_tokens, "temperature": r.params.temperature,
                   "top_p": r.params.top_p, "seed": r.params.seed} for r in requests]
        for i, (r, text) in enumerate(zip(requests, self.fn([r.messages for r in requests], params), strict=True)):
            r.stats.prompt_tokens = self.count_tokens(r.messages)
            r.stats.completion_tokens = len(text.split())
            r.stats.finish_reason = "stop"
            yield i, text


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
    model_ref: str | ResolvedModel,
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
    constrain: bool = False,
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
    `constrain`: constrained decoding, for tasks that list their allowed names (a patrol test's
    `allowed_names` var): the answer's `action` can only be one of them (gt_ext.serve.choices).
    Recorded in the result (`run.decoding`) and written as `eval-<suite>-constrained.json`, so
    it never stands in for the free-decoding result.
    """
    if engine not in ENGINES:
        raise GtExtError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not isinstance(k, int) or k < 1:
        raise GtExtError(f"--k must be an integer >= 1, got {k!r}")
    if limit is not None and limit < 1:
        raise GtExtError(f"--limit must be >= 1, got {limit}")
    t0 = time.perf_counter()
    model = model_ref if isinstance(model_ref, ResolvedModel) else resolve(model_ref)
    spec = str(suite.root if isinstance(suite, suite_mod.EvalSuite) else suite)
    st = suite if isinstance(suite, suite_mod.EvalSuite) else suite_mod.load(suite)
    cfg = config if isinstance(config, dict) else scoring.load_config(config)
    selected = st.select(split)
    tasks = list(selected[:limit] if limit else selected)
    full = len(tasks) == len(st.tasks)

    contamination = None
    if corpus is not None:
        from gt_ext.evals import contamination as contam

        if max_overlap is None and st.meta.get("max_overlap") is not None:
            max_overlap = float(st.meta["max_overlap"])  # the suite's own threshold (see its suite.yaml)
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
    if constrain and via_promptfoo:
        raise GtExtError(f"--constrain needs tasks graded in process; {len(via_promptfoo)} task(s) of suite "
                         f"{st.name} go to promptfoo (engine {engine})")
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
                    if constrain:
                        for p, (_, t, _) in zip(params, ready, strict=True):
                            if names := patrol_report.listed_names(t):
                                p["choices"] = {"action": names}
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
    patrol = None
    if st.meta.get("patrol_report"):
        patrol = patrol_report.report(tasks_all, results)
        patrol["reworded"] = patrol_report.by_family(tasks_all, results, {"@r"})["overall"]
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
        "decoding": "constrained" if constrain else "free",
    }
    run["engines"] = dict(Counter(s.meta.get("engine", "none") for t in task_results for s in t.samples))
    run["grader"] = grader_ref
    run["cost_per_token"] = price
    res = EvalResult(suite=st.name, model=model.ref, role=role, k=k, tasks=task_results, categories=cats,
                     composite=comp, pass_k=pk, gate=verdict, seconds=time.perf_counter() - t0,
                     contamination=contamination, system_prompt=system, patrol=patrol,
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
    elif write and model.results_dir is not None:
        target = Path(model.results_dir) / result_filename(res.to_dict())
        # Signed, so that `gt model register` can tell it from a hand-written file (evals.provenance).
        atomic_write_json(target, provenance.sign(res.to_dict()))
        res.written_to = str(target)
    return res
