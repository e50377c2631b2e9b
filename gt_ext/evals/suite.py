"""An eval suite: a folder of promptfoo tests and/or sandbox tasks, seen as one list of `Task`s.

Folder layout (every file optional except that there must be some tasks):

    SUITE/suite.yaml              {name, role, max_new_tokens, system_prompt}  (this project's metadata;
                                  system_prompt: role = the role's training system turn first)
    SUITE/promptfooconfig.yaml    a promptfoo suite, unchanged         (gt_ext.evals.promptfoo)
    SUITE/sandbox.yaml            sandbox tasks                        (gt_ext.evals.sandbox)

`builtin:ROLE` names the project's own suite in `gt_ext/evals/tasks/ROLE/`. A task's category is
its promptfoo test's `metadata.category` (or `general`).
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


class Task(Protocol):
    """What the runner needs from a task: prepare -> messages, grade(output), cleanup."""

    id: str
    category: str

    def prepare(self) -> list[dict[str, str]]: ...
    def grade(self, output: str) -> Sample: ...
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

    def rendered(self) -> str:
        """The prompt text with this test's vars filled in."""
        return promptfoo.render(self.prompt.raw, self.test.vars)

    def prepare(self) -> list[dict[str, str]]:
        """Chat messages for the model."""
        return promptfoo.prompt_messages(self.rendered())

    def grade(self, output: str) -> Sample:
        """promptfoo's verdict on `output`."""
        g = promptfoo.grade(self.test, output, prompt=self.rendered(), prompt_label=self.prompt.label, base=self.root)
        return Sample(passed=g.passed, score=g.score, output=output, reason=g.reason, skipped=g.skipped)

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


def resolve_suite_dir(spec: str | Path) -> Path:
    """`builtin:ROLE` -> the packaged suite folder; anything else is a path that must exist."""
    s = str(spec)
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
    )


def _pf_tasks(pf: promptfoo.Suite) -> list[PromptfooTask]:
    out = []
    for test in pf.tests:
        for prompt in pf.prompts:
            tid = test.name if len(pf.prompts) == 1 else f"{test.name}@{prompt.label}"
            if any(t.id == tid for t in out):
                tid = f"{tid}#{test.index + 1}"
            out.append(PromptfooTask(id=tid, category=str(test.metadata.get("category", "general")),
                                     test=test, prompt=prompt, root=pf.root))
    return out
