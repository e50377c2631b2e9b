"""Parse and validate `*.formula.toml` files in Gas Town's schema.

The fields read here are gt's own (`formula`, `description`, `type`, `version`, `[vars.X]` with
`description`/`required`/`default` or the `X = "default"` shorthand, `[[steps]]` with `id`, `title`,
`description`, `needs`, `acceptance`) plus keys of this project that gt ignores:
`run` (the command line of the step, with `{{var}}` placeholders), `job_status` (the status the
training-job bead takes while the step runs), `exit_statuses` (exit codes of the step's command
that are outcomes rather than failures, each naming the job status it leads to; see
gt_ext.orchestrate.runner: `stopped` pauses the job there, `gate-failed` lets it go on and end in
that status), at the top, `restart_when_done` (a run of a formula whose job already finished
starts a new job instead of finding nothing left to do) and, on a variable, `resolve` (a resolver
in `gt_ext.orchestrate.resolvers` that turns the variable into values the steps use).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gt_ext.errors import GtExtError

PROJECT_FORMULAS = Path(__file__).resolve().parents[2] / "formulas"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class Var:
    """A formula variable: required ones have no default."""

    name: str
    description: str = ""
    required: bool = False
    default: str | None = None
    resolve: str | None = None  # this project's key: a resolver (gt_ext.orchestrate.resolvers) run before the steps


@dataclass(frozen=True)
class Step:
    """One step; `run` is the command this project's runner executes for it."""

    id: str
    title: str
    description: str = ""
    needs: tuple[str, ...] = ()
    acceptance: str = ""
    run: str | None = None
    job_status: str | None = None
    exit_statuses: tuple[tuple[int, str], ...] = ()

    def outcome(self, code: int) -> str | None:
        """The job status a non-zero exit code of this step stands for, if it is a declared outcome."""
        return dict(self.exit_statuses).get(code)


@dataclass
class Formula:
    """A parsed formula file."""

    name: str
    path: Path
    description: str = ""
    type: str = "workflow"
    version: int = 1
    vars: dict[str, Var] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    restart_when_done: bool = False

    def ordered_steps(self) -> list[Step]:
        """Steps in dependency order; ties keep file order, so the order is deterministic."""
        ids = [s.id for s in self.steps]
        by_id = {s.id: s for s in self.steps}
        done: list[str] = []
        pending = list(ids)
        while pending:
            ready = [i for i in pending if all(n in done for n in by_id[i].needs)]
            if not ready:
                raise GtExtError(f"{self.path}: steps {', '.join(pending)} form a dependency cycle")
            done.append(ready[0])
            pending.remove(ready[0])
        return [by_id[i] for i in done]

    def resolve_vars(self, given: dict[str, str], derived: dict[str, str] | None = None) -> dict[str, str]:
        """Check `given` against the declared vars and fill defaults; placeholders in defaults may
        name other vars or `derived` values (e.g. job_dir). Unknown or missing vars are errors."""
        unknown = sorted(set(given) - set(self.vars))
        if unknown:
            known = ", ".join(sorted(self.vars)) or "none"
            raise GtExtError(f"formula {self.name}: unknown variable {unknown[0]!r} (variables: {known})")
        values: dict[str, str] = dict(derived or {})
        for name, var in self.vars.items():
            if name in given:
                values[name] = str(given[name])
            elif var.default is not None:
                values[name] = var.default
            elif var.required:
                raise GtExtError(f"formula {self.name}: missing required variable {name!r} ({var.description})")
        # Defaults may refer to other variables: substitute until stable (bounded: no cycles).
        for _ in range(len(values) + 1):
            changed = False
            for k, v in values.items():
                new = substitute(v, values, strict=False)
                if new != v:
                    values[k], changed = new, True
            if not changed:
                break
        return values


def substitute(text: str, values: dict[str, str], strict: bool = True) -> str:
    """Replace `{{name}}` placeholders; with `strict`, an unknown name is an error."""

    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in values:
            return values[key]
        if strict:
            raise GtExtError(f"placeholder {{{{{key}}}}} has no value")
        return m.group(0)

    return _PLACEHOLDER.sub(repl, text)


def load_formula(path: str | Path) -> Formula:
    """Parse a formula file; malformed TOML or schema errors name the file (and line for TOML)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise GtExtError(f"{path}: no such formula file") from e
    except tomllib.TOMLDecodeError as e:
        raise GtExtError(f"{path}: invalid TOML: {e}") from e
    name = data.get("formula")
    if not isinstance(name, str) or not name:
        raise GtExtError(f"{path}: missing required key 'formula' (the formula's name)")
    vars_: dict[str, Var] = {}
    for vname, spec in (data.get("vars") or {}).items():
        if isinstance(spec, str):
            vars_[vname] = Var(vname, default=spec)
        elif isinstance(spec, dict):
            default = spec.get("default")
            vars_[vname] = Var(
                vname,
                description=str(spec.get("description", "")),
                required=bool(spec.get("required", False)),
                default=None if default is None else str(default),
                resolve=None if spec.get("resolve") is None else str(spec["resolve"]),
            )
        else:
            raise GtExtError(f"{path}: vars.{vname} must be a string or a table")
    steps: list[Step] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("steps") or []):
        sid = raw.get("id")
        if not sid:
            raise GtExtError(f"{path}: steps[{i}] has no id")
        if sid in seen:
            raise GtExtError(f"{path}: duplicate step id {sid!r}")
        seen.add(sid)
        steps.append(
            Step(
                id=sid,
                title=str(raw.get("title", sid)),
                description=str(raw.get("description", "")),
                needs=tuple(raw.get("needs") or ()),
                acceptance=str(raw.get("acceptance", "")),
                run=raw.get("run"),
                job_status=raw.get("job_status"),
                exit_statuses=_exit_statuses(path, sid, raw.get("exit_statuses")),
            )
        )
    for s in steps:
        for n in s.needs:
            if n not in seen:
                raise GtExtError(f"{path}: step {s.id!r} needs unknown step {n!r}")
    return Formula(
        name=name,
        path=path,
        description=str(data.get("description", "")),
        type=str(data.get("type", "workflow")),
        version=int(data.get("version", 1)),
        vars=vars_,
        steps=steps,
        restart_when_done=bool(data.get("restart_when_done", False)),
    )


def _exit_statuses(path: Path, sid: str, raw: object) -> tuple[tuple[int, str], ...]:
    """`exit_statuses = {"3" = "stopped"}` -> ((3, "stopped"),); only outcome statuses are allowed."""
    if raw is None:
        return ()
    from gt_ext.orchestrate.runner import OUTCOME_STATUSES

    if not isinstance(raw, dict):
        raise GtExtError(f"{path}: step {sid!r}: exit_statuses must be a table of exit code = status")
    out = []
    for code, status in raw.items():
        if not str(code).isdigit() or int(code) == 0:
            raise GtExtError(f"{path}: step {sid!r}: exit_statuses key {code!r} is not a non-zero exit code")
        if status not in OUTCOME_STATUSES:
            raise GtExtError(f"{path}: step {sid!r}: exit status {status!r} is not one of {', '.join(OUTCOME_STATUSES)}")
        out.append((int(code), str(status)))
    return tuple(sorted(out))


def list_formulas() -> list[Path]:
    """This project's formula files."""
    return sorted(PROJECT_FORMULAS.glob("*.formula.toml"))


def find_formula(name: str) -> Formula | None:
    """This project's formula called `name`, or None (then it is gt's, not ours)."""
    for p in list_formulas():
        if p.name == f"{name}.formula.toml":
            return load_formula(p)
    return None
