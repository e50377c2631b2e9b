"""Read promptfoo suites (config YAML, test YAML, prompt files) and grade outputs by promptfoo's rules.

Supported, as promptfoo defines them:
- config `prompts` (inline strings, `file://` text/markdown files split on a `---` line, `file://`
  JSON chat prompts, `{id|raw, label}` objects, globs), `tests` (inline list, `file://` YAML/JSON,
  globs), `defaultTest` (inline or `file://`) merged into each test (vars/options/metadata: the test
  wins; asserts: the default's first), array vars expanded into one test per combination;
- templates in the nunjucks subset `{{ var }}`, `{{ a.b | filter }}`, `{% if x is defined %}`,
  `{% elif %}`, `{% else %}`, `{% for %}` (rendered with Jinja2's sandbox, with nunjucks' way of
  printing booleans, missing values, lists and objects);
- `options.transform` and per-assertion `transform` (JavaScript, run with node);
- assertions `equals`, `contains`, `icontains`, `contains-any`, `contains-all`, `icontains-any`,
  `icontains-all`, `regex`, `starts-with`, `is-json` (with optional JSON schema), `javascript`,
  `cost` and `latency` (with the call's own cost and latency, threshold required), each also as
  `not-<type>`; `weight`, `threshold` (test and javascript assertion), `metric`.
  A test passes when every assertion passes, or, if it sets `threshold`, when the weighted mean
  score reaches it (promptfoo's AssertionsResult rule). Weight-0 assertions never fail a test.
Anything else (model-graded, python, rouge-n, similar, ...) is graded by the real promptfoo
(gt_ext.evals.pfengine); a test this grader is asked to grade with one of those is reported as
skipped: not counted as passed or failed.
"""

from __future__ import annotations

import copy
import glob
import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gt_ext.errors import GtExtError
from gt_ext.evals import jsrun

log = logging.getLogger(__name__)

CONFIG_NAMES = ("promptfooconfig.yaml", "promptfooconfig.yml", "promptfooconfig.json")
SUPPORTED = {
    "equals", "contains", "icontains", "contains-any", "contains-all", "icontains-any",
    "icontains-all", "regex", "starts-with", "is-json", "javascript", "cost", "latency",
}


@dataclass
class Prompt:
    """One prompt template: `raw` is rendered with the test vars; `label` names it in reports."""

    raw: str
    label: str


@dataclass
class TestCase:
    """One promptfoo test after defaultTest merge and var expansion."""

    index: int
    description: str | None
    vars: dict[str, Any]
    asserts: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the test as the suite wrote it (before defaultTest)

    @property
    def name(self) -> str:
        """A stable name for reports: the description, or `test-<n>`."""
        return self.description or f"test-{self.index + 1}"


@dataclass
class Suite:
    """A loaded promptfoo suite: its prompts and tests, and the folder file refs resolve against."""

    root: Path
    description: str | None
    prompts: list[Prompt]
    tests: list[TestCase]
    config: dict[str, Any]
    default_test: dict[str, Any] = field(default_factory=dict)  # `defaultTest`, a file:// one read


@dataclass
class AssertionResult:
    """Outcome of one assertion; `skipped` ones carry why."""

    type: str
    passed: bool
    score: float
    reason: str
    skipped: bool = False
    weight: float = 1.0
    metric: str | None = None


@dataclass
class Grade:
    """Outcome of one test on one output, by promptfoo's rules."""

    passed: bool
    score: float  # weighted mean of assertion scores, 0..1
    reason: str
    skipped: bool
    output: Any  # after options.transform
    assertions: list[AssertionResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (assertion details included)."""
        return {
            "passed": self.passed,
            "score": self.score,
            "reason": self.reason,
            "skipped": self.skipped,
            "assertions": [a.__dict__ for a in self.assertions],
        }


# ----------------------------------------------------------------------------------- templates


def _nunjucks_str(value: Any) -> str:
    """Print a value the way nunjucks (JavaScript String()) does."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return ",".join(_nunjucks_str(v) for v in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        from jinja2 import Undefined
        from jinja2.sandbox import SandboxedEnvironment

        env = SandboxedEnvironment(
            autoescape=False,
            keep_trailing_newline=True,
            undefined=Undefined,
            finalize=lambda v: "" if isinstance(v, Undefined) else _nunjucks_str(v),
        )
        # nunjucks' `dump` is JSON.stringify; `safe` is a no-op without autoescape.
        env.filters["dump"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
        env.filters["safe"] = lambda v: v
        _ENV = env
    return _ENV


def render(template: str, vars: dict[str, Any]) -> str:
    """Render a nunjucks-style template with `vars`; a template error names the template's start."""
    from jinja2 import TemplateError

    try:
        return _env().from_string(template).render(**vars)
    except TemplateError as e:
        head = template.strip().splitlines()[0][:60] if template.strip() else ""
        raise GtExtError(f"template error in {head!r}: {e}") from e


def template_vars(template: str) -> set[str]:
    """Names of the variables a template reads (so hidden vars can be told apart)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_env().parse(template)))


def prompt_messages(rendered: str) -> list[dict[str, str]]:
    """Turn a rendered prompt into chat messages: a JSON list of {role, content} or one user turn."""
    text = rendered.strip()
    if text.startswith("["):
        try:
            msgs = json.loads(text)
        except json.JSONDecodeError:
            msgs = None
        if isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
    return [{"role": "user", "content": rendered}]


# ------------------------------------------------------------------------------------- loading


def _read_data_file(path: Path) -> Any:
    if not path.is_file():
        raise GtExtError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise GtExtError(f"{path}: invalid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from e


def _expand_file_ref(ref: str, root: Path) -> list[Path]:
    target = ref[len("file://"):] if ref.startswith("file://") else ref
    if any(ch in target for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(root / target)))
        if not found:
            raise GtExtError(f"{root / target}: glob matches no file")
        return found
    return [root / target]


def _load_prompts(spec: Any, root: Path) -> list[Prompt]:
    if spec is None:
        raise GtExtError(f"{root}: promptfoo config has no prompts")
    items = spec if isinstance(spec, list) else [spec]
    prompts: list[Prompt] = []
    for item in items:
        label = None
        if isinstance(item, dict):
            label = item.get("label")
            item = item.get("raw") or item.get("id")
            if not isinstance(item, str):
                raise GtExtError(f"{root}: a prompt entry needs `raw` or `id`")
        if not isinstance(item, str):
            raise GtExtError(f"{root}: prompts must be strings or objects, got {type(item).__name__}")
        if item.startswith("file://"):
            for p in _expand_file_ref(item, root):
                if not p.is_file():
                    raise GtExtError(f"{p}: prompt file not found")
                text = p.read_text(encoding="utf-8")
                if p.suffix in (".json", ".jsonl", ".yaml", ".yml"):
                    parts = [text]
                else:
                    # promptfoo splits text prompt files on a line holding only `---`.
                    parts = [t for t in re.split(r"^---$", text, flags=re.M) if t.strip()]
                for i, part in enumerate(parts):
                    name = label or (p.name if len(parts) == 1 else f"{p.name}:{i + 1}")
                    prompts.append(Prompt(raw=part.strip("\n") if p.suffix not in (".json",) else part, label=name))
        else:
            prompts.append(Prompt(raw=item, label=label or item[:40]))
    return prompts


def _load_tests_raw(spec: Any, root: Path) -> list[dict[str, Any]]:
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            for p in _expand_file_ref(item, root):
                if p.suffix == ".csv":
                    raise GtExtError(f"{p}: CSV test files are not supported; use YAML or JSON")
                data = _read_data_file(p)
                data = data if isinstance(data, list) else [data]
                for d in data:
                    if not isinstance(d, dict):
                        raise GtExtError(f"{p}: each test must be a mapping")
                    out.append(d)
        elif isinstance(item, dict):
            out.append(item)
        else:
            raise GtExtError(f"{root}: a test must be a mapping or a file:// path")
    return out


def _load_var_value(value: Any, root: Path) -> Any:
    if isinstance(value, str) and value.startswith("file://"):
        p = root / value[len("file://"):]
        if p.suffix in (".js", ".py", ".cjs", ".mjs"):
            raise GtExtError(f"{p}: script vars are not supported")
        if not p.is_file():
            raise GtExtError(f"{p}: var file not found")
        if p.suffix in (".yaml", ".yml", ".json"):
            return _read_data_file(p)
        return p.read_text(encoding="utf-8")
    return value


def _merge_default(default: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(test)
    merged["vars"] = {**(default.get("vars") or {}), **(test.get("vars") or {})}
    merged["assert"] = list(default.get("assert") or []) + list(test.get("assert") or [])
    merged["options"] = {**(default.get("options") or {}), **(test.get("options") or {})}
    merged["metadata"] = {**(default.get("metadata") or {}), **(test.get("metadata") or {})}
    if "threshold" not in test and "threshold" in default:
        merged["threshold"] = default["threshold"]
    return merged


def _expand_vars(vars: dict[str, Any]) -> list[dict[str, Any]]:
    """promptfoo runs one test per combination of array-valued vars."""
    keys = [k for k, v in vars.items() if isinstance(v, list)]
    if not keys:
        return [vars]
    combos = itertools.product(*(vars[k] for k in keys))
    return [{**vars, **dict(zip(keys, combo, strict=True))} for combo in combos]


def load_suite(path: str | Path) -> Suite:
    """Load a promptfoo suite from its config file or the folder holding `promptfooconfig.yaml`."""
    p = Path(path)
    if p.is_dir():
        cfg_path = next((p / n for n in CONFIG_NAMES if (p / n).is_file()), None)
        if cfg_path is None:
            raise GtExtError(f"{p}: no promptfooconfig.yaml in this folder")
    elif p.is_file():
        cfg_path = p
    else:
        raise GtExtError(f"{p}: suite not found")
    root = cfg_path.parent
    config = _read_data_file(cfg_path)
    if not isinstance(config, dict):
        raise GtExtError(f"{cfg_path}: promptfoo config must be a mapping")
    prompts = _load_prompts(config.get("prompts"), root)
    default = config.get("defaultTest") or {}
    if isinstance(default, str):
        default = _read_data_file(_expand_file_ref(default, root)[0])
    if not isinstance(default, dict):
        raise GtExtError(f"{cfg_path}: defaultTest must be a mapping")
    tests: list[TestCase] = []
    for raw in _load_tests_raw(config.get("tests"), root):
        merged = _merge_default(default, raw)
        if not isinstance(merged["assert"], list):
            raise GtExtError(f"{cfg_path}: `assert` of test {raw.get('description', len(tests) + 1)!r} must be a list")
        vars = {k: _load_var_value(v, root) for k, v in merged["vars"].items()}
        for combo in _expand_vars(vars):
            for a in merged["assert"]:
                if not isinstance(a, dict) or "type" not in a:
                    raise GtExtError(f"{cfg_path}: test {merged.get('description') or len(tests) + 1!r} has an assertion without `type`")
            tests.append(
                TestCase(
                    index=len(tests),
                    description=merged.get("description"),
                    vars=combo,
                    asserts=merged["assert"],
                    options=merged["options"],
                    metadata=merged["metadata"],
                    threshold=merged.get("threshold"),
                    raw=raw,
                )
            )
    if not tests:
        raise GtExtError(f"{cfg_path}: suite has no tests")
    return Suite(root=root, description=config.get("description"), prompts=prompts, tests=tests, config=config,
                 default_test=default)


# ------------------------------------------------------------------------------------- grading


def coerce_string(output: Any) -> str:
    """promptfoo's coerceString: strings as they are, anything else as JSON."""
    return output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))


def _render_value(value: Any, vars: dict[str, Any]) -> Any:
    if isinstance(value, str) and not value.startswith("file://"):
        return render(value, vars)
    if isinstance(value, list):
        return [render(v, vars) if isinstance(v, str) and not v.startswith("file://") else v for v in value]
    return value


def _js_regex(pattern: str) -> re.Pattern:
    # JavaScript named groups are (?<name>...); Python wants (?P<name>...).
    return re.compile(re.sub(r"\(\?<(?![=!])", "(?P<", pattern))


def _check_builtin(base: str, value: Any, output: Any) -> tuple[bool, str]:
    """The non-JavaScript assertions (before inversion). Returns (passed, reason-on-failure)."""
    text = coerce_string(output)
    if base == "equals":
        if isinstance(value, dict | list):
            try:
                ok = json.loads(text) == value
            except json.JSONDecodeError:
                ok = False
        else:
            ok = text == _nunjucks_str(value)
        return ok, f"Expected output to equal {value!r}"
    if base == "contains":
        return _nunjucks_str(value) in text, f"Expected output to contain {value!r}"
    if base == "icontains":
        return _nunjucks_str(value).lower() in text.lower(), f"Expected output to contain {value!r} (case-insensitive)"
    if base in ("contains-any", "contains-all", "icontains-any", "icontains-all"):
        vals = value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
        fold = base.startswith("i")
        hay = text.lower() if fold else text
        hits = [(_nunjucks_str(v).lower() if fold else _nunjucks_str(v)) in hay for v in vals]
        ok = any(hits) if base.endswith("any") else all(hits)
        return ok, f"Expected output to {base} {vals!r}"
    if base == "regex":
        return bool(_js_regex(str(value)).search(text)), f"Expected output to match regex {value!r}"
    if base == "starts-with":
        return text.startswith(_nunjucks_str(value)), f"Expected output to start with {value!r}"
    if base == "is-json":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            return False, f"Expected output to be valid JSON: {e.msg}"
        if value:
            import jsonschema

            schema = value if isinstance(value, dict) else yaml.safe_load(str(value))
            try:
                jsonschema.validate(parsed, schema)
            except jsonschema.ValidationError as e:
                return False, f"JSON does not conform to the schema: {e.message}"
        return True, ""
    raise AssertionError(base)


def _transform_context(test: TestCase, prompt_label: str) -> dict[str, Any]:
    return {"vars": test.vars, "prompt": {"label": prompt_label}}


def _check_measure(a: dict[str, Any], kind: str, value: float | None) -> tuple[bool, str] | str:
    """promptfoo's `cost` / `latency`: value <= threshold (inverted for not-). A str result is why
    it cannot be graded (promptfoo errors the test then)."""
    if a.get("threshold") is None:
        return f"{kind} assertion must have a threshold"
    if value is None:
        return f"{kind} assertion: the call reported no {kind}"
    ok = (float(value) <= float(a["threshold"])) != a["_inverse"]
    unit = "ms" if kind == "latency" else ""
    shown = f"{value:.0f}{unit}" if kind == "latency" else f"{float(value):.2g}"
    rel = "less than or equal to" if a["_inverse"] else "greater than"
    return ok, f"{kind.capitalize()} {shown} is {rel} threshold {a['threshold']}{unit}"


def grade(test: TestCase, output: str, prompt: str = "", prompt_label: str = "", base: Path | None = None,
          latency_ms: float | None = None, cost: float | None = None) -> Grade:
    """Grade one model `output` for `test` exactly as promptfoo would score it.

    `prompt` is the rendered prompt (given to JavaScript as `context.prompt`); `latency_ms` and
    `cost` are the call's, for `latency` and `cost` assertions.
    """
    asserts = [dict(a) for a in test.asserts]
    for a in asserts:
        a["_inverse"] = a["type"].startswith("not-")
        a["_base"] = a["type"][4:] if a["_inverse"] else a["type"]
    js_needed = bool(test.options.get("transform")) or any(
        a["_base"] == "javascript" or a.get("transform") for a in asserts if a["_base"] in SUPPORTED
    )
    js: dict[str, Any] = {}
    transformed: Any = output
    if js_needed:
        context = {
            "prompt": prompt,
            "vars": test.vars,
            "test": {"description": test.description, "vars": test.vars, "metadata": test.metadata,
                     "options": test.options, "assert": test.asserts},
        }
        job = {
            "output": output,
            "base": str(base) if base else None,
            "context": context,
            "transform": test.options.get("transform"),
            "transform_context": _transform_context(test, prompt_label),
            "asserts": [
                {
                    "transform": a.get("transform") if a["_base"] in SUPPORTED else None,
                    "code": _render_value(a.get("value"), test.vars) if a["_base"] == "javascript" else None,
                    "inverse": a["_inverse"],
                    "threshold": a.get("threshold"),
                    "config": a.get("config"),
                }
                for a in asserts
            ],
        }
        try:
            js = jsrun.run_js(job)
        except RuntimeError as e:
            results = [AssertionResult(a["type"], False, 0.0, f"skipped: {e}", skipped=True) for a in asserts]
            return Grade(False, 0.0, f"skipped: {e}", True, output, results)
        if js.get("error"):
            # promptfoo fails the test when the transform throws.
            return Grade(False, 0.0, js["error"], False, output, [])
        transformed = js.get("output", output)

    results: list[AssertionResult] = []
    for i, a in enumerate(asserts):
        weight = float(a.get("weight", 1))
        metric = a.get("metric")
        if a["_base"] not in SUPPORTED:
            results.append(AssertionResult(a["type"], False, 0.0, f"assertion {a['type']!r} is graded by the real "
                                           "promptfoo, not by this grader", skipped=True, weight=weight, metric=metric))
            continue
        sub = js["asserts"][i] if js else {}
        value_out = sub.get("output", transformed) if js else transformed
        if a["_base"] == "javascript":
            r = sub["result"]
            passed, score, reason = bool(r["pass"]), float(r["score"]), r.get("reason", "")
        elif a["_base"] in ("cost", "latency"):
            got = _check_measure(a, a["_base"], cost if a["_base"] == "cost" else latency_ms)
            if isinstance(got, str):
                results.append(AssertionResult(a["type"], False, 0.0, got, skipped=True, weight=weight, metric=metric))
                continue
            passed, why = got
            score, reason = (1.0 if passed else 0.0), ("Assertion passed" if passed else why)
        else:
            try:
                ok, why = _check_builtin(a["_base"], _render_value(a.get("value"), test.vars), value_out)
                passed = ok != a["_inverse"]
                if not passed and a["_inverse"]:
                    why = f"Expected output not to satisfy {a['_base']} {a.get('value')!r}"
            except re.error as e:  # promptfoo throws on a bad pattern: the test fails either way
                passed, why = False, f"invalid regex {a.get('value')!r}: {e}"
            score = 1.0 if passed else 0.0
            reason = "Assertion passed" if passed else why
        if weight == 0:
            passed = True  # promptfoo: weight 0 is a metric-only assertion that cannot fail
        results.append(AssertionResult(a["type"], passed, score, reason, weight=weight, metric=metric))

    skipped = [r for r in results if r.skipped]
    if skipped:
        return Grade(False, 0.0, "skipped: " + "; ".join(r.reason for r in skipped), True, transformed, results)
    if not results:
        return Grade(True, 1.0, "No assertions", False, transformed, results)
    total_w = sum(r.weight for r in results)
    score = sum(r.score * r.weight for r in results) / total_w if total_w > 0 else 0.0
    failed = [r for r in results if not r.passed]
    passed = not failed
    reason = failed[-1].reason if failed else "All assertions passed"
    if test.threshold:
        passed = score >= test.threshold
        reason = f"Aggregate score {score:.2f} {'>=' if passed else '<'} {test.threshold} threshold"
    return Grade(passed, score, reason, False, transformed, results)
