"""An eval suite: a folder of promptfoo tests and/or sandbox tasks, seen as one list of `Task`s.

Folder layout (every file optional except that there must be some tasks):

    SUITE/suite.yaml              {name, role, max_new_tokens, system_prompt, heldout}  (this
                                  project's metadata; system_prompt: role = the role's training
                                  system turn first; heldout: scenario names, see below)
    SUITE/promptfooconfig.yaml    a promptfoo suite, unchanged         (gt_ext.evals.promptfoo)
    SUITE/sandbox.yaml            sandbox tasks                        (gt_ext.evals.sandbox)

`builtin:ROLE` names the project's own suite in `gt_ext/evals/tasks/ROLE/`. A task's category is
its promptfoo test's `metadata.category` (or `general`), its scenario `metadata.scenario` (sandbox
tasks: `category`, `scenario` keys).

Held-out split, by scenario: a scenario is a family of cases that test one situation (several
wordings, numbers, names). `heldout: [scenario, ...]` in suite.yaml puts every case of those
scenarios in the `heldout` split, the rest in `dev`. Whole scenarios move, never single cases, so a
near-twin of a held-out case is never on the dev side. Held-out scenarios are never looked at when
building training data or tuning (sample town, presets); results report both splits. A suite that
declares `heldout` must give every task a scenario, and every held-out name must be a scenario of
the suite.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from gt_ext.errors import GtExtError
from gt_ext.evals import promptfoo
from gt_ext.evals.scoring import Sample

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).with_name("tasks")
SPLITS = ("dev", "heldout")


class Task(Protocol):
    """What the runner needs from a task: prepare -> messages, grade(output), cleanup."""

    id: str
    category: str

    def prepare(self) -> list[dict[str, str]]: ...
    def grade(self, output: str, meta: dict[str, Any] | None = None) -> Sample: ...
    def cleanup(self) -> None: ...
    def overlap_text(self) -> str: ...


@dataclass
class PromptfooTask:
    """One (test, prompt) pair of a promptfoo suite."""

    id: str
    category: str
    test: promptfoo.TestCase
    prompt: promptfoo.Prompt
    root: Path
    suite: promptfoo.Suite | None = None  # the promptfoo suite it came from (the real-promptfoo engine runs it)

    def rendered(self) -> str:
        """The prompt text with this test's vars filled in."""
        return promptfoo.render(self.prompt.raw, self.test.vars)

    def prepare(self) -> list[dict[str, str]]:
        """Chat messages for the model."""
        return promptfoo.prompt_messages(self.rendered())

    def grade(self, output: str, meta: dict[str, Any] | None = None) -> Sample:
        """promptfoo's verdict on `output`; `meta` brings the call's `latency_ms` and `cost`."""
        meta = meta or {}
        g = promptfoo.grade(self.test, output, prompt=self.rendered(), prompt_label=self.prompt.label, base=self.root,
                            latency_ms=meta.get("latency_ms"), cost=meta.get("cost"))
        return Sample(passed=g.passed, score=g.score, output=output, reason=g.reason, skipped=g.skipped,
                      meta={**meta, "engine": "ours"})

    @property
    def scenario(self) -> str | None:
        """The scenario family this case belongs to (`metadata.scenario`)."""
        sc = self.test.metadata.get("scenario")
        return str(sc) if sc else None

    def cleanup(self) -> None:
        """Nothing to clean."""

    guard_vars: tuple[str, ...] | None = None  # suite.yaml `guard_vars`: only these vars are case-specific
    guard_skip_commands: bool = False  # suite.yaml: `$ cmd` lines are the step's own commands, not the case

    def overlap_text(self) -> str:
        """The test-specific text the model sees (string vars the prompt uses, or only the suite's
        `guard_vars` when it names them), for the contamination guard."""
        used = promptfoo.template_vars(self.prompt.raw)
        if self.guard_vars is not None:
            used = used & set(self.guard_vars)
        text = "\n".join(str(v) for k, v in self.test.vars.items() if k in used and isinstance(v, str))
        if self.guard_skip_commands:
            text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("$ "))
        return text


@dataclass
class EvalSuite:
    """A loaded suite."""

    name: str
    role: str | None
    root: Path
    tasks: list[Any]
    max_new_tokens: int = 96
    meta: dict[str, Any] = field(default_factory=dict)
    heldout: frozenset[str] = frozenset()

    def split_of(self, task: Any) -> str:
        """`heldout` when the task's scenario is held out, else `dev`."""
        return "heldout" if getattr(task, "scenario", None) in self.heldout else "dev"

    def select(self, split: str | None) -> list[Any]:
        """The tasks of one split (`dev`, `heldout`), or all of them for None / `all`."""
        if split in (None, "all"):
            return list(self.tasks)
        if split not in SPLITS:
            raise GtExtError(f"--split must be dev, heldout or all, got {split!r}")
        return [t for t in self.tasks if self.split_of(t) == split]


def suite_hash(root: str | Path) -> str:
    """sha256 over a suite's files (relative path and content of each, sorted): two results with
    the same hash were scored on the same tasks, checks and prompts."""
    import hashlib

    root = Path(root)
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    h = hashlib.sha256()
    for f in files:
        rel = f.name if root.is_file() else f.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(f.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def role_suite(role: str, town_root: str | Path | None = None) -> str:
    """The suite that gates `role` (and that `role:ROLE` names): the town's choice in
    `<town>/settings/gt-ext.json` `{"evals": {"gate_suites": {ROLE: PATH}}}` (PATH relative to the
    town root, or builtin:NAME), else the role's formula patrol suite `builtin:ROLE-patrol` where
    there is one (deacon, witness, refinery, dog), else `builtin:ROLE`."""
    from gt_ext.roles import check_role

    check_role(role)
    if town_root is not None:
        from gt_ext.gastown import ext_settings

        path = ext_settings.town_file(town_root)
        chosen = (ext_settings.section(path, "evals").get("gate_suites") or {}).get(role)
        if chosen:
            if not isinstance(chosen, str):
                raise GtExtError(f"{path}: evals.gate_suites.{role} must be a suite path or builtin:NAME")
            return chosen if chosen.startswith("builtin:") else str((Path(town_root) / chosen).resolve())
    return f"builtin:{role}-patrol" if (TASKS_DIR / f"{role}-patrol").is_dir() else f"builtin:{role}"


def resolve_suite_dir(spec: str | Path) -> Path:
    """`builtin:NAME` -> the packaged suite folder; `role:ROLE` -> the suite that gates ROLE in this
    town (`role_suite`); anything else is a path that must exist."""
    s = str(spec)
    if s.startswith("role:"):
        from gt_ext.gastown.town import find_town

        town = find_town()
        return resolve_suite_dir(role_suite(s.split(":", 1)[1], town.root if town else None))
    if s.startswith("builtin:"):
        role = s.split(":", 1)[1]
        d = TASKS_DIR / role
        if not d.is_dir():
            have = ", ".join(sorted(p.name for p in TASKS_DIR.iterdir() if p.is_dir()))
            raise GtExtError(f"no builtin suite {role!r}: builtin suites are {have}")
        return d
    p = Path(s).expanduser()
    if not p.exists():
        raise GtExtError(f"{p}: suite not found")
    return p


def load(spec: str | Path) -> EvalSuite:
    """Load a suite folder (or a promptfoo config file, or `builtin:ROLE`)."""
    p = resolve_suite_dir(spec)
    if p.is_file():  # a promptfoo config file given directly
        pf = promptfoo.load_suite(p)
        return EvalSuite(name=p.parent.name, role=None, root=p.parent, tasks=_pf_tasks(pf))
    meta: dict[str, Any] = {}
    if (p / "suite.yaml").is_file():
        try:
            meta = yaml.safe_load((p / "suite.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise GtExtError(f"{p / 'suite.yaml'}: invalid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(meta, dict):
            raise GtExtError(f"{p / 'suite.yaml'}: must be a mapping")
    tasks: list[Any] = []
    if any((p / n).is_file() for n in promptfoo.CONFIG_NAMES):
        tasks += _pf_tasks(promptfoo.load_suite(p))
    if (p / "sandbox.yaml").is_file():
        from gt_ext.evals import sandbox

        tasks += sandbox.load_tasks(p / "sandbox.yaml")
    if not tasks:
        raise GtExtError(f"{p}: no promptfooconfig.yaml or sandbox.yaml with tasks")
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            raise GtExtError(f"{p}: duplicate task id {t.id!r}")
        seen.add(t.id)
    guard = meta.get("guard_vars")
    if guard is not None:
        if not isinstance(guard, list) or not all(isinstance(g, str) for g in guard):
            raise GtExtError(f"{p / 'suite.yaml'}: guard_vars must be a list of var names")
        for t in tasks:
            if isinstance(t, PromptfooTask):
                t.guard_vars = tuple(guard)
                t.guard_skip_commands = bool(meta.get("guard_skip_commands"))
    role = meta.get("role")
    return EvalSuite(
        name=str(meta.get("name") or p.name),
        role=str(role) if role else None,
        root=p,
        tasks=tasks,
        max_new_tokens=int(meta.get("max_new_tokens", 96)),
        meta=meta,
        heldout=_heldout(p / "suite.yaml", meta, tasks),
    )


def _heldout(where: Path, meta: dict[str, Any], tasks: list[Any]) -> frozenset[str]:
    """suite.yaml `heldout`, checked: a list of scenario names the suite's tasks use."""
    names = meta.get("heldout")
    if names is None:
        return frozenset()
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise GtExtError(f"{where}: heldout must be a list of scenario names")
    missing = [t.id for t in tasks if not getattr(t, "scenario", None)]
    if missing:
        raise GtExtError(f"{where}: the suite has a held-out split, so every task needs a scenario; "
                         f"{len(missing)} have none (first: {missing[0]})")
    known = {t.scenario for t in tasks}
    unknown = sorted(set(names) - known)
    if unknown:
        raise GtExtError(f"{where}: heldout names scenario {unknown[0]!r}, which no task has")
    if set(names) == known:
        raise GtExtError(f"{where}: every scenario is held out; keep some for the dev split")
    return frozenset(names)


def _pf_tasks(pf: promptfoo.Suite) -> list[PromptfooTask]:
    out = []
    for test in pf.tests:
        for prompt in pf.prompts:
            tid = test.name if len(pf.prompts) == 1 else f"{test.name}@{prompt.label}"
            if any(t.id == tid for t in out):
                tid = f"{tid}#{test.index + 1}"
            out.append(PromptfooTask(id=tid, category=str(test.metadata.get("category", "general")),
                                     test=test, prompt=prompt, root=pf.root, suite=pf))
    return out
