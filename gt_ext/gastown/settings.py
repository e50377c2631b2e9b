"""Read and write Gas Town settings files in gt's own schema, keeping what we do not touch.

Files (gt v1.0.1):
- town settings `<town>/settings/config.json`: `{"type": "town-settings", "version": 1,
  "default_agent", "agents": {NAME: RuntimeConfig}, "role_agents": {ROLE: NAME}, ...}`
- rig settings `<town>/<rig>/settings/config.json`: `{"type": "rig-settings", "version": 1,
  "agent", "agents", "role_agents", ...}`
- agent registries `<town>/settings/agents.json`, `<rig>/settings/agents.json`:
  `{"version": 1, "agents": {NAME: {...preset...}}}`

`load(path)` -> SettingsFile; edit `.data`; `.save()` writes atomically (temp + rename) after
copying the old file to `<name>.bak`, and keeps the original bytes of every untouched key.
Malformed JSON is refused with `file:line:col`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gt_ext.atomic import atomic_write_bytes, atomic_write_text
from gt_ext.errors import ConfigError
from gt_ext.gastown import jsonedit
from gt_ext.gastown.town import Rig, Town

log = logging.getLogger(__name__)

TOWN_SETTINGS_DEFAULT = {"type": "town-settings", "version": 1}
# What gt v1.0.1 uses when the town has no settings file (config.NewTownSettings()).
GT_NEW_TOWN_SETTINGS: dict[str, Any] = {"type": "town-settings", "version": 1, "default_agent": "claude",
                                        "agents": {}, "role_agents": {}}
RIG_SETTINGS_DEFAULT = {"type": "rig-settings", "version": 1}
AGENTS_DEFAULT: dict[str, Any] = {"version": 1, "agents": {}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RuntimeSession(_Open):
    """RuntimeConfig.session."""

    session_id_env: str | None = None
    config_dir_env: str | None = None


class RuntimeHooks(_Open):
    """RuntimeConfig.hooks."""

    provider: str | None = None
    dir: str | None = None
    settings_file: str | None = None
    informational: bool | None = None


class RuntimeTmux(_Open):
    """RuntimeConfig.tmux: how gt tells the agent is alive and ready."""

    process_names: list[str] | None = None
    ready_prompt_prefix: str | None = None
    ready_delay_ms: int | None = None


class RuntimeInstructions(_Open):
    """RuntimeConfig.instructions."""

    file: str | None = None


class RuntimeConfig(_Open):
    """gt's RuntimeConfig: one agent definition in `agents`. Unknown fields are kept."""

    provider: str | None = None
    command: str | None = None
    args: list[str] = Field(default_factory=list)  # gt writes "args" even when empty
    env: dict[str, str] | None = None
    initial_prompt: str | None = None
    prompt_mode: str | None = None
    session: RuntimeSession | None = None
    hooks: RuntimeHooks | None = None
    tmux: RuntimeTmux | None = None
    instructions: RuntimeInstructions | None = None
    exec_wrapper: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The dict gt expects (unset optional fields left out, like Go's omitempty)."""
        return self.model_dump(exclude_none=True)


class SettingsFile:
    """One settings JSON file: `.data` is the dict to edit; `.save()` writes it back safely."""

    def __init__(self, path: Path, data: dict[str, Any], doc: jsonedit.Doc | None, raw: bytes | None):
        self.path = path
        self.data = data
        self._doc = doc
        self._raw = raw

    @property
    def exists(self) -> bool:
        """Whether the file was on disk when loaded."""
        return self._raw is not None

    # -- gt schema helpers -----------------------------------------------------------------------
    def agents(self) -> dict[str, Any]:
        """The `agents` map (created empty if absent)."""
        agents = self.data.setdefault("agents", {})
        if not isinstance(agents, dict):
            raise ConfigError(f"{self.path}: 'agents' must be an object")
        return agents

    def set_agent(self, name: str, config: RuntimeConfig | dict[str, Any]) -> None:
        """Define or replace agent `name` (validated as a RuntimeConfig)."""
        rc = config if isinstance(config, RuntimeConfig) else _runtime(config, f"{self.path}: agents.{name}")
        self.agents()[name] = rc.to_json()

    def remove_agent(self, name: str) -> None:
        """Drop agent `name` if present."""
        self.agents().pop(name, None)

    def role_agents(self) -> dict[str, str]:
        """The `role_agents` map (role -> agent name), created empty if absent."""
        ra = self.data.setdefault("role_agents", {})
        if not isinstance(ra, dict):
            raise ConfigError(f"{self.path}: 'role_agents' must be an object")
        return ra

    def set_role_agent(self, role: str, agent: str | None) -> None:
        """Point `role` at agent `agent` (None removes the mapping)."""
        if agent is None:
            self.role_agents().pop(role, None)
        else:
            self.role_agents()[role] = agent

    # -- writing -----------------------------------------------------------------------------------
    def render(self) -> str:
        """The text `save()` would write."""
        return jsonedit.render(self.data, self._doc)

    def save(self, backup: bool = True) -> None:
        """Write atomically; first copy the current file to `<name>.bak` (also atomically)."""
        text = self.render()
        json.loads(text)  # never write something we could not read back
        if backup and self._raw is not None:
            atomic_write_bytes(self.path.with_name(self.path.name + ".bak"), self._raw)
        atomic_write_text(self.path, text)
        self._raw = text.encode("utf-8")
        self._doc = jsonedit.parse(text)
        log.info("wrote %s", self.path)


def _runtime(obj: Any, where: str) -> RuntimeConfig:
    try:
        return RuntimeConfig.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{where}{'.' + loc if loc else ''}: {err['msg']}") from None


def load(path: str | os.PathLike, default: dict[str, Any] | None = None) -> SettingsFile:
    """Load a settings JSON file; when missing, start from a copy of `default` (or {}).

    Malformed JSON raises ConfigError naming `file:line:col`.
    """
    p = Path(path)
    if not p.exists():
        return SettingsFile(p, json.loads(json.dumps(default or {})), None, None)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 (byte {e.start})") from None
    try:
        doc = jsonedit.parse(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    if not isinstance(doc.value, dict):
        raise ConfigError(f"{p}: expected a JSON object at the top")
    for key in ("agents", "role_agents"):
        if key in doc.value and not isinstance(doc.value[key], dict):
            raise ConfigError(f"{p}: '{key}' must be an object")
    # .data is a deep copy: edits must not reach the parsed tree, which is the 'before' picture.
    return SettingsFile(p, copy.deepcopy(doc.value), doc, raw)


def save(settings: SettingsFile, backup: bool = True) -> None:
    """Same as `settings.save(backup)`."""
    settings.save(backup)


# -- where the files are ---------------------------------------------------------------------------
def _settings_dir(where: Town | Rig | str | os.PathLike) -> Path:
    if isinstance(where, (Town, Rig)):
        return where.settings_dir
    return Path(where) / "settings"


def town_settings(town: Town) -> SettingsFile:
    """`<town>/settings/config.json` (gt's default content if missing)."""
    return load(town.settings_dir / "config.json", TOWN_SETTINGS_DEFAULT)


def rig_settings(rig: Rig) -> SettingsFile:
    """`<town>/<rig>/settings/config.json` (gt's default content if missing)."""
    return load(rig.settings_dir / "config.json", RIG_SETTINGS_DEFAULT)


def agents_registry(where: Town | Rig | str | os.PathLike) -> SettingsFile:
    """`<town or rig>/settings/agents.json` (`{"version": 1, "agents": {}}` if missing)."""
    return load(_settings_dir(where) / "agents.json", AGENTS_DEFAULT)


def settings_files(town: Town) -> list[Path]:
    """gt's settings files of a town and of each rig that exist (config.json, agents.json), town first."""
    out = []
    for where in (town, *town.rigs()):
        for name in ("config.json", "agents.json"):
            p = _settings_dir(where) / name
            if p.is_file():
                out.append(p)
    return out


def resolve_role_agent(town: Town, role: str, rig: Rig | None = None) -> str:
    """The agent name gt would use for `role`: rig role_agents -> town role_agents -> rig agent ->
    town default_agent -> "claude"."""
    ts = town_settings(town).data
    rs = rig_settings(rig).data if rig else {}
    for cand in ((rs.get("role_agents") or {}).get(role), (ts.get("role_agents") or {}).get(role),
                 rs.get("agent"), ts.get("default_agent")):
        if cand:
            return str(cand)
    return "claude"


PROJECT_SETTINGS = "gt-ext.json"  # this project's own settings file: gt drops unknown keys in its own


def project_settings(town_root: str | os.PathLike) -> dict[str, Any]:
    """`<town>/settings/gt-ext.json` ({} when absent); a one-line error naming file:line when broken."""
    p = Path(town_root) / "settings" / PROJECT_SETTINGS
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: unreadable ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    return data
