"""Run promptfoo-format tasks through the real promptfoo, against this project's own model server.

Our own grader (`gt_ext.evals.promptfoo`) grades the core assertions in process (fast, batched,
checked against promptfoo on canned answers). Every other assertion type promptfoo documents —
rouge-n, bleu, gleu, meteor, levenshtein, perplexity, is-valid-openai-*, is-sql/xml/html,
python and ruby files, word-count, finish-reason, model-graded ones (llm-rubric, g-eval,
factuality, model-graded-closedqa, answer-relevance, context-*), similar (embeddings) — is graded
here by promptfoo itself, so its rules hold by construction:

1. the model under test is served by `gt_ext.serve.api.create_app` (the OpenAI-compatible API of
   `gt-ext serve`) on 127.0.0.1, a free port and a one-off bearer token, in a thread of this
   process (the model is loaded once), with a `/v1/embeddings` route (MiniLM, `gt_ext.rag.embed`)
   for promptfoo's embedding-based assertions;
2. promptfoo calls it through a small provider module written next to the run (`provider.js`):
   it sends the chat messages (the suite's role system turn first when it asks for one), and
   reports the tokens, the cost (`cost_per_token` x tokens: 0 for a self-hosted model unless a
   price is configured) and, through promptfoo's own timing, the latency;
3. model-graded assertions are graded by the configured grader (a registry model or a base model,
   `grader` in the eval config; default the base model of the model under test), served the same
   way; every test's and assertion's own grader provider is replaced by it, and the result says
   which grader it was;
4. the suite is copied to a temp folder (so its `file://` references resolve), the selected tests
   are written into a generated config with a hidden `__gtext_task` var that maps promptfoo's
   results back to our task ids, and `promptfoo eval --no-cache --no-write --repeat k` runs it;
5. a test promptfoo could not grade (an error, e.g. a provider that is not reachable from here)
   is left ungraded with promptfoo's message. Assertion types that need an outside service are
   left ungraded before anything runs, saying which and why (`UNGRADABLE`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gt_ext.errors import GtExtError
from gt_ext.evals import promptfoo
from gt_ext.evals.scoring import Sample

log = logging.getLogger(__name__)

# Graded in process by gt_ext.evals.promptfoo (cost and latency with this model's own numbers).
CORE = promptfoo.SUPPORTED
# Assertions that send the output to a grader model.
MODEL_GRADED = {"llm-rubric", "model-graded-closedqa", "model-graded-factuality", "factuality", "g-eval",
                "answer-relevance", "context-faithfulness", "context-recall", "context-relevance",
                "conversation-relevance", "select-best", "agent-rubric", "search-rubric"}
# Assertion types no grader here can decide, and why.
UNGRADABLE = {
    "moderation": "needs a moderation service (OpenAI's or Azure's moderation API), which is not reachable from here",
    "classifier": "needs a Hugging Face classifier model through its inference API, which is not reachable from here",
    "pi": "needs the Pi Labs scoring API, which is not reachable from here",
    "guardrails": "needs a provider that reports guardrail flags; the served model reports none",
    "search-rubric": "needs a grader with web search, which is not available here",
    "human": "needs a person to grade it",
    "select-best": "ranks the outputs of several providers; one model under test has nothing to rank against",
    "max-score": "ranks the outputs of several providers; one model under test has nothing to rank against",
    "trace-error-spans": "needs OpenTelemetry traces of the call, which the served model does not emit",
    "trace-span-count": "needs OpenTelemetry traces of the call, which the served model does not emit",
    "trace-span-duration": "needs OpenTelemetry traces of the call, which the served model does not emit",
    "skill-used": "needs an agent's skill trace, which a single chat completion does not have",
    "agent-rubric": "needs an agent run's trajectory, which a single chat completion does not have",
}
# promptfoo reports these as a failed assertion, although the output was never judged: the test is
# left ungraded instead (assertion type -> the start of promptfoo's reason).
_NOT_JUDGED = {"webhook": "Webhook error:", "meteor": "METEOR assertion requires"}
TRAJECTORY_WHY = "needs an agent trajectory (tool calls over several turns), which a single chat completion does not have"


def base_type(t: str) -> str:
    """`not-contains` -> `contains`."""
    return t[4:] if t.startswith("not-") else t


def ungradable(test: promptfoo.TestCase) -> str | None:
    """Why no grader here can decide this test (naming the assertion), or None."""
    for a in test.asserts:
        t = base_type(str(a.get("type", "")))
        why = UNGRADABLE.get(t) or (TRAJECTORY_WHY if t.startswith("trajectory:") else None)
        if why:
            return f"assertion {a['type']!r}: {why}"
    return None


def needs_promptfoo(test: promptfoo.TestCase) -> bool:
    """True when a test has an assertion our in-process grader does not grade."""
    return any(base_type(str(a.get("type", ""))) not in CORE for a in test.asserts)


def needs_grader(test: promptfoo.TestCase) -> bool:
    """True when a test has a model-graded assertion."""
    return any(base_type(str(a.get("type", ""))) in MODEL_GRADED for a in test.asserts)


def promptfoo_binary() -> str | None:
    """The real promptfoo: $PROMPTFOO_BIN, else on PATH, else next to this interpreter (install.sh)."""
    import sys

    for cand in (os.environ.get("PROMPTFOO_BIN"), shutil.which("promptfoo"), str(Path(sys.executable).parent / "promptfoo")):
        if cand and shutil.which(cand) and shutil.which("node"):
            return cand
    return None


# ------------------------------------------------------------------------------------ the server

_PROVIDER_JS = r"""
// gt-ext's promptfoo provider: one served model on the project's OpenAI-compatible API.
class GtExtProvider {
  constructor(options) { this.cfg = (options && options.config) || {}; this.config = this.cfg; this.label = options && options.label; }
  id() { return 'gt-ext:' + this.cfg.model; }
  toString() { return this.id(); }
  messages(prompt) {
    let msgs = null;
    const text = String(prompt);
    if (text.trim().startsWith('[')) {
      try {
        const parsed = JSON.parse(text);
        if (Array.isArray(parsed) && parsed.every((m) => m && m.role && m.content !== undefined)) {
          msgs = parsed.map((m) => ({ role: String(m.role), content: typeof m.content === 'string' ? m.content : JSON.stringify(m.content) }));
        }
      } catch (e) { msgs = null; }
    }
    msgs = msgs || [{ role: 'user', content: text }];
    if (this.cfg.system && msgs[0].role !== 'system') msgs.unshift({ role: 'system', content: this.cfg.system });
    return msgs;
  }
  // With tools (or functions) in the suite's provider config, an answer made of tool calls comes
  // back structured, as an OpenAI provider returns it: our <tool_call>{"name", "input"}</tool_call>
  // blocks (the corpus's and the agent's format) or a JSON list of OpenAI tool calls.
  toolCalls(text) {
    const calls = [];
    const re = /<tool_call>([\s\S]*?)<\/tool_call>/g;
    let m;
    while ((m = re.exec(text)) !== null) {
      try {
        const c = JSON.parse(m[1]);
        calls.push({ type: 'function', function: { name: String(c.name), arguments: JSON.stringify(c.input ?? c.arguments ?? {}) } });
      } catch (e) { return null; }
    }
    if (calls.length && !text.replace(re, '').trim()) return calls;
    try {
      const j = JSON.parse(text);
      const list = Array.isArray(j) ? j : (j && j.tool_calls);
      if (Array.isArray(list) && list.length && list.every((c) => c && c.function && c.function.name)) return list;
    } catch (e) { return null; }
    return null;
  }
  async post(path, body) {
    const r = await fetch(this.cfg.url + path, { method: 'POST', body: JSON.stringify(body),
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + this.cfg.token } });
    const j = await r.json();
    if (!r.ok) throw new Error((j && j.error && j.error.message) || ('HTTP ' + r.status));
    return j;
  }
  async callApi(prompt, context) {
    const body = { model: this.cfg.model, messages: this.messages(prompt), max_tokens: this.cfg.max_tokens,
                   temperature: this.cfg.temperature || 0, top_p: this.cfg.top_p || 1 };
    if (this.cfg.adapters) body.adapters = this.cfg.adapters;
    try {
      const j = await this.post('/v1/chat/completions', body);
      const u = j.usage || {};
      const out = { output: j.choices[0].message.content, finishReason: j.choices[0].finish_reason,
                    tokenUsage: { prompt: u.prompt_tokens, completion: u.completion_tokens, total: u.total_tokens, numRequests: 1 },
                    cost: (this.cfg.cost_per_token || 0) * (u.total_tokens || 0) };
      if (this.cfg.tools || this.cfg.functions) {
        const calls = this.toolCalls(String(out.output));
        if (calls) out.output = this.cfg.tools ? calls : calls[0].function;
      }
      if (this.cfg.logprobs) {
        // perplexity assertions: the log-probability of each generated token, scored by the same model
        const lp = await this.post('/v1/gtext/logprobs', { messages: body.messages, completion: out.output,
                                                           adapters: this.cfg.adapters });
        out.logProbs = lp.logprobs;
      }
      return out;
    } catch (e) {
      return { error: 'gt-ext model ' + this.cfg.model + ': ' + e.message };
    }
  }
  async callEmbeddingApi(text) {
    try {
      const j = await this.post('/v1/embeddings', { input: String(text) });
      return { embedding: j.data[0].embedding, tokenUsage: { total: 0, numRequests: 1 } };
    } catch (e) {
      return { error: 'gt-ext embeddings: ' + e.message };
    }
  }
}
module.exports = GtExtProvider;
"""


class _Server:
    """`gt_ext.serve.api.create_app` for one generator, on 127.0.0.1 in a thread of this process,
    plus `/v1/embeddings` and `/v1/gtext/logprobs` for promptfoo's embedding and perplexity checks."""

    def __init__(self, generator: Any, model: Any):
        import uvicorn

        from gt_ext.gastown.dolt import free_port
        from gt_ext.serve.api import ApiLimits, create_app

        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        # promptfoo is this server's one client and sends as fast as the model answers: no rate limit.
        app = create_app(generator, model, token=self.token, limits=ApiLimits(rate_per_client=0))
        _add_embeddings(app)
        _add_logprobs(app, model)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="gt-ext-eval-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> _Server:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise GtExtError(f"eval model server on 127.0.0.1:{self.port} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def _add_embeddings(app: Any) -> None:
    """`POST /v1/embeddings` ({input: str | [str]}) with the project's MiniLM sentence model."""
    import asyncio

    from starlette.responses import JSONResponse

    async def embeddings(request: Any) -> Any:
        from gt_ext.rag.embed import MODEL_NAME, embed

        body = await request.json()
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts or []]
        vecs = await asyncio.to_thread(embed, texts)
        return JSONResponse({"object": "list", "model": MODEL_NAME,
                             "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)]})

    # A plain Starlette route: the body is read by hand, nothing for FastAPI to infer.
    app.add_route("/v1/embeddings", embeddings, methods=["POST"])


def _add_logprobs(app: Any, model: Any) -> None:
    """`POST /v1/gtext/logprobs` ({messages, completion}): the natural-log probability of each token
    of `completion` after the chat-templated `messages`, under the served model (its base and
    adapters, loaded once for scoring on first use)."""
    scorer: dict[str, Any] = {}
    lock = threading.Lock()

    def score(messages: list[dict[str, str]], completion: str) -> list[float]:
        import torch

        with lock:
            if "model" not in scorer:
                from gt_ext.models import load_model

                weights, adapters = model.torch_weights()
                m, tok = load_model(weights)
                for path, _w in adapters:
                    from peft import PeftModel

                    m = PeftModel.from_pretrained(m, str(path)).merge_and_unload()
                scorer.update(model=m.eval(), tok=tok)
            m, tok = scorer["model"], scorer["tok"]
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            if prompt and isinstance(prompt[0], list):
                prompt = prompt[0]
            target = tok(completion, add_special_tokens=False)["input_ids"]
            if not target:
                return []
            ids = torch.tensor([list(prompt) + list(target)])
            with torch.inference_mode():
                logits = m(input_ids=ids).logits[0, len(prompt) - 1:-1].float()  # [T, vocab]: next-token scores
            logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(target)[:, None])[:, 0]
            return [round(float(x), 6) for x in logp]

    async def logprobs(request: Any) -> Any:
        import asyncio

        from starlette.responses import JSONResponse

        body = await request.json()
        got = await asyncio.to_thread(score, body.get("messages") or [], str(body.get("completion") or ""))
        return JSONResponse({"logprobs": got})

    app.add_route("/v1/gtext/logprobs", logprobs, methods=["POST"])


# ------------------------------------------------------------------------------------ the run


@dataclass
class Served:
    """A model reachable by the provider module: where, and which model name / adapters to ask for."""

    url: str
    token: str
    model: str
    adapters: list[str] | None = None

    def provider(self, provider_js: Path, label: str, **cfg: Any) -> dict[str, Any]:
        conf = {"url": self.url, "token": self.token, "model": self.model, **cfg}
        if self.adapters is not None:
            conf["adapters"] = self.adapters
        return {"id": f"file://{provider_js}", "label": label, "config": conf}


def _with_grader(test_raw: dict[str, Any], grader: dict[str, Any]) -> dict[str, Any]:
    """A raw test whose own grader choices (options.provider, assertion provider) are replaced by ours."""
    t = copy.deepcopy(test_raw)
    t.pop("provider", None)  # a test may name another model to run: we score the model under test
    t.setdefault("options", {})["provider"] = grader
    for a in t.get("assert") or []:
        if isinstance(a, dict) and "provider" in a:
            a["provider"] = grader
    return t


def write_run(tasks: list[Any], work: Path, provider: dict[str, Any], grader: dict[str, Any] | None) -> Path:
    """The generated promptfoo config for `tasks` (all of one suite) in the copied suite folder `work`:
    the suite's prompts as promptfoo read them, its defaultTest, and each selected test once, with a
    hidden `__gtext_test` var (its index) so results map back to (test, prompt) = our task."""
    pf = tasks[0].suite
    default = copy.deepcopy(pf.default_test)
    if grader is not None:
        default = _with_grader(default, grader)
    tests, seen = [], set()
    for t in tasks:
        if t.test.index in seen:
            continue
        seen.add(t.test.index)
        raw = copy.deepcopy(t.test.raw if grader is None else _with_grader(t.test.raw, grader))
        raw.pop("provider", None)
        raw["description"] = t.test.name
        raw["vars"] = {**t.test.vars, "__gtext_test": t.test.index}
        tests.append(raw)
    cfg = {"description": pf.description or "gt-ext eval", "prompts": [{"raw": p.raw, "label": p.label} for p in pf.prompts],
           "providers": [provider], "defaultTest": default, "tests": tests}
    path = work / "gtext-promptfooconfig.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def _samples(out: dict[str, Any], tasks: list[Any]) -> dict[str, list[Sample]]:
    """promptfoo's output JSON -> our samples per task id (an error = an ungraded sample, with why)."""
    labels = [p.label for p in tasks[0].suite.prompts]
    by_key = {(t.test.index, labels.index(t.prompt.label)): t.id for t in tasks}
    got: dict[str, list[Sample]] = {}
    for r in (out.get("results") or {}).get("results") or []:
        test_idx = ((r.get("testCase") or {}).get("vars") or {}).get("__gtext_test")
        tid = by_key.get((test_idx, r.get("promptIdx", 0)))
        if tid is None:
            continue
        text = ((r.get("response") or {}).get("output"))
        text = text if isinstance(text, str) else json.dumps(text) if text is not None else ""
        meta = {"latency_ms": r.get("latencyMs"), "cost": r.get("cost"), "engine": "promptfoo"}
        if r.get("failureReason") == 2 or (r.get("error") and not r.get("gradingResult")):
            err = str(r.get("error") or "error").strip().splitlines()[0][:300]
            got.setdefault(tid, []).append(Sample(False, 0.0, text, f"skipped: promptfoo could not grade it: {err}",
                                                  skipped=True, meta=meta))
            continue
        g = r.get("gradingResult") or {}
        failed = [c for c in g.get("componentResults") or [] if not c.get("pass")]
        unjudged = [c for c in failed if str(c.get("reason", "")).startswith(
            _NOT_JUDGED.get(base_type(str((c.get("assertion") or {}).get("type", ""))), "\0"))]
        if unjudged:
            c = unjudged[0]
            got.setdefault(tid, []).append(Sample(False, 0.0, text, f"skipped: promptfoo could not grade it: assertion "
                                                  f"{(c.get('assertion') or {}).get('type')!r}: {c.get('reason')}"[:400],
                                                  skipped=True, meta=meta))
            continue
        reason = g.get("reason") or (failed[-1].get("reason") if failed else "All assertions passed")
        got.setdefault(tid, []).append(Sample(bool(r.get("success")), float(r.get("score") or 0.0), text, str(reason),
                                              meta=meta))
    return got


def run(tasks: list[Any], model: Any, generator: Any, k: int, system: str | None, max_new_tokens: int,
        sampling: dict[str, Any], cost_per_token: float, grader_spec: str | None,
        make_generator: Any) -> tuple[dict[str, list[Sample]], str | None]:
    """Grade `tasks` (promptfoo tasks of one suite) with the real promptfoo against the served model.

    Returns ({task id: samples}, the grader's ref or None). `make_generator(ResolvedModel)` builds a
    generator for a grader on another base model."""
    binary = promptfoo_binary()
    if binary is None:
        raise GtExtError("the real promptfoo (and node) is needed for these assertions: run ./install.sh "
                         "or set PROMPTFOO_BIN")
    need_grader = any(needs_grader(t.test) for t in tasks)
    with tempfile.TemporaryDirectory(prefix="gt-ext-promptfoo-") as tmp:
        tmp_path = Path(tmp)
        work = tmp_path / "suite"
        shutil.copytree(tasks[0].suite.root, work)
        provider_js = tmp_path / "provider.js"
        provider_js.write_text(_PROVIDER_JS)
        with _Server(generator, model) as srv:
            served = Served(srv.url, srv.token, model.ref)
            cfg = {"system": system, "max_tokens": max_new_tokens, "cost_per_token": cost_per_token,
                   "logprobs": any(base_type(str(a.get("type"))).startswith("perplexity") for t in tasks for a in t.test.asserts),
                   **_suite_tools(tasks[0].suite.config)}
            if k > 1:
                cfg.update(temperature=float(sampling.get("temperature", 0.7)), top_p=float(sampling.get("top_p", 0.95)))
            provider = served.provider(provider_js, model.ref, **cfg)
            grader_ref, grader, extra = None, None, None
            if need_grader:
                grader_ref, gserved, extra = _grader(grader_spec, model, srv, make_generator)
                grader = gserved.provider(provider_js, f"grader {grader_ref}", max_tokens=512)
            try:
                config = write_run(tasks, work, provider, grader)
                env = {**os.environ, "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
                       "PROMPTFOO_CONFIG_DIR": str(tmp_path / "promptfoo-home"), "NODE_NO_WARNINGS": "1"}
                out = tmp_path / "out.json"
                argv = [binary, "eval", "-c", str(config), "--no-cache", "--no-write", "--no-table", "--no-progress-bar",
                        "-o", str(out), "-j", "8", "--repeat", str(k)]
                log.info("promptfoo: %d task(s) x %d through %s", len(tasks), k, srv.url)
                proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
                if not out.is_file():
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                    raise GtExtError(f"promptfoo eval exited {proc.returncode} without results: {' / '.join(tail)}")
                got = _samples(json.loads(out.read_text()), tasks)
            finally:
                if extra is not None:
                    extra.__exit__(None, None, None)
    missing = [t.id for t in tasks if t.id not in got]
    for tid in missing:
        got[tid] = [Sample(False, 0.0, "", "skipped: promptfoo returned no result for it", skipped=True)] * k
    return got, grader_ref


def _suite_tools(config: dict[str, Any]) -> dict[str, Any]:
    """The tool / function definitions a suite gave its own provider, for is-valid-openai-* checks."""
    for p in config.get("providers") or []:
        conf = p.get("config") if isinstance(p, dict) else None
        if isinstance(conf, dict):
            found = {k: conf[k] for k in ("tools", "functions") if k in conf}
            if found:
                return found
    return {}


def _grader(spec: str | None, model: Any, srv: _Server, make_generator: Any) -> tuple[str, Served, Any]:
    """Resolve the grader: `base` (the base model of the model under test), `base:<name>`, a
    registry ref or a run/export folder. Served by the same server when it is that server's bare
    base model, else by a second one. Returns (its ref, where it is served, the extra server or None)."""
    from gt_ext.models.refs import resolve

    spec = spec or "base"
    if spec == "base":
        spec = f"base:{model.base_model}"
    g = resolve(spec)
    served_base, _ = model.torch_weights()
    grader_base, grader_adapters = g.torch_weights()
    if grader_base == served_base and not grader_adapters:
        return g.ref, Served(srv.url, srv.token, model.ref, adapters=[]), None
    extra = _Server(make_generator(g), g).__enter__()
    return g.ref, Served(extra.url, extra.token, g.ref), extra


__all__ = ["CORE", "MODEL_GRADED", "UNGRADABLE", "needs_grader", "needs_promptfoo", "promptfoo_binary", "run",
           "ungradable"]
