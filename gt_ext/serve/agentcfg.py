"""The node0 agent's settings and the sandbox policy built from them.

Settings live in the town's `settings/gt-ext.json` under `"agent"` (every key optional; an unknown
key is an error naming it):

    {"agent": {
       "sandbox": {"write": ["{rig}/refinery/rig"], "read": [], "deny": ["~/.secret-notes"], "unhide": [],
                   "env": ["MY_VAR"], "network": "loopback", "ports": [], "max_procs": 256,
                   "memory_mb": 8192, "file_mb": 1024, "tmp_mb": 256},
       "roles": {"refinery": {"sandbox": {"network": "host"}}},
       "bang_commands": {"keyboard": true, "allow_from": ["mayor"]}}}

A role's `sandbox` adds to the lists of the town-wide one and replaces its scalars. In paths,
`~` and `{home}` are the home folder, `{town}` the town root, `{rig}` the rig folder, `{workdir}`
the work dir. Always writable: the work dir and the beads folder `bd` uses from it. Hidden:
`DEFAULT_DENY` (credentials, token files, the corpus) plus `deny`, less what `unhide` names (e.g.
`~/.ssh` for a role that pushes over SSH with `network: host`). Network `loopback` relays only the town's
Dolt port(s); `host` opens the host's network, `none` closes everything.

`bang_commands`: a prompt `!command` runs `command` without the model (Claude Code's bash mode).
Typed at the pane's keyboard (no sender) it runs when `keyboard` is true (default); as a gt nudge
(`[from SENDER] !command`) only when SENDER is listed in `allow_from` (default: nobody). Either
way it runs in the same sandbox as the model's commands.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gt_ext.errors import ConfigError
from gt_ext.serve.rolecard import AgentEnv
from gt_ext.serve.sandbox import SandboxPolicy

# Read-denied paths (relative ones are under the home folder).
DEFAULT_DENY = (
    ".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker", ".netrc", ".git-credentials",
    ".config/git/credentials", ".npmrc", ".pypirc", ".config/gh", ".config/hub", ".claude", ".claude.json",
    ".anthropic", ".cache/huggingface/token", ".huggingface/token", ".password-store", ".local/share/keyrings",
    ".gt-api-token", ".config/op", ".vault-token", ".terraform.d/credentials.tfrc.json", ".bash_history",
    ".zsh_history", ".python_history", "/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d",
    "/etc/ssh", "/root/.ssh",
)
# Environment variables passed into the sandbox (names, or prefixes ending in "*").
ENV_ALLOW = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "PYTHONPATH",
    "VIRTUAL_ENV", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "GIT_CONFIG_NOSYSTEM",
    "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "DOLT_ROOT_PATH",
    "GT_*", "BD_*", "BEADS_*",
)
# Never passed on, whatever the allow-list says: the name says it holds a secret.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|COOKIE|(^|_)API_?KEY|(^|_)KEY($|_)",
                         re.IGNORECASE)


class SandboxSettings(BaseModel):
    """`agent.sandbox` (or `agent.roles.ROLE.sandbox`)."""

    model_config = ConfigDict(extra="forbid")

    write: list[str] = Field(default_factory=list)
    read: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    unhide: list[str] = Field(default_factory=list)  # default-denied paths this role may read
    env: list[str] = Field(default_factory=list)
    network: Literal["loopback", "none", "host"] | None = None
    ports: list[int] = Field(default_factory=list)
    max_procs: int | None = Field(default=None, ge=8)
    memory_mb: int | None = Field(default=None, ge=256)
    file_mb: int | None = Field(default=None, ge=1)
    tmp_mb: int | None = Field(default=None, ge=1)


class RoleSettings(BaseModel):
    """`agent.roles.ROLE`."""

    model_config = ConfigDict(extra="forbid")

    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)


class BangSettings(BaseModel):
    """`agent.bang_commands`: who may run `!command` without the model."""

    model_config = ConfigDict(extra="forbid")

    keyboard: bool = True
    allow_from: list[str] = Field(default_factory=list)


class AgentSettings(BaseModel):
    """The `agent` object of `settings/gt-ext.json`."""

    model_config = ConfigDict(extra="forbid")

    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    roles: dict[str, RoleSettings] = Field(default_factory=dict)
    bang_commands: BangSettings = Field(default_factory=BangSettings)


def load_agent_settings(town_root: str | os.PathLike | None) -> AgentSettings:
    """The town's agent settings (defaults without a town or a settings file); ConfigError names a bad key."""
    from gt_ext.gastown.town import EXT_SETTINGS_FILE, read_ext_settings

    raw = read_ext_settings(town_root).get("agent") or {}
    try:
        return AgentSettings.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in ("agent", *err["loc"]))
        raise ConfigError(f"{Path(town_root or '.') / 'settings' / EXT_SETTINGS_FILE}: {where}: {err['msg']}") from None


def sandbox_env(environ: Mapping[str, str], extra: list[str] = ()) -> dict[str, str]:
    """The environment a tool command gets: allow-listed names only, never a secret-looking one."""
    out: dict[str, str] = {}
    allow = (*ENV_ALLOW, *extra)
    for k, v in environ.items():
        listed = any(k == a or (a.endswith("*") and k.startswith(a[:-1])) for a in allow)
        if listed and (k in extra or not SECRET_NAME.search(k)):
            out[k] = v
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    out["TMPDIR"] = "/tmp"
    return out


def build_policy(workdir: str | os.PathLike, env: AgentEnv, settings: AgentSettings | None = None,
                 environ: Mapping[str, str] | None = None) -> SandboxPolicy:
    """The sandbox policy for the agent of `env` (role, rig, town) working in `workdir`."""
    from gt_ext.gastown.dolt import dolt_ports
    from gt_ext.gastown.town import beads_dir_for

    settings = settings or AgentSettings()
    environ = os.environ if environ is None else environ
    base, role = settings.sandbox, settings.roles.get(env.role, RoleSettings()).sandbox
    work = Path(workdir).resolve()
    home = Path(environ.get("HOME") or Path.home())
    town = Path(env.root).resolve() if env.root else None
    subst = {"home": str(home), "workdir": str(work), "town": str(town or ""),
             "rig": str(town / env.rig) if town and env.rig else ""}

    def paths(items: list[str] | tuple[str, ...], relative_to_home: bool = False) -> list[Path]:
        out = []
        for item in items:
            try:
                text = item.format(**subst)
            except (KeyError, IndexError, ValueError):
                raise ConfigError(f"agent sandbox path {item!r}: placeholders are {{home}}, {{town}}, {{rig}}, "
                                  "{workdir}") from None
            if not text or any(f"{{{k}}}" in item and not v for k, v in subst.items()):
                continue  # e.g. {rig} outside a rig: the entry does not apply here
            if text == "~" or text.startswith("~/"):
                text = str(home) + text[1:]
            p = Path(text)
            out.append(p if p.is_absolute() else (home if relative_to_home else work) / p)
        return out

    beads = beads_dir_for(work)
    write = ([beads] if beads else []) + paths(base.write + role.write)
    read = [home] + ([town] if town else []) + paths(base.read + role.read)
    deny = paths(DEFAULT_DENY, relative_to_home=True) + paths(base.deny + role.deny)
    deny += [town / ".corpus", town / ".gt-ext"] if town else []
    if environ.get("GT_EXT_CLAUDE_PROJECTS"):  # session transcripts
        deny.append(Path(environ["GT_EXT_CLAUDE_PROJECTS"]))
    deny.append(Path(environ.get("GT_EXT_HOME") or home / "gt") / "corpus")
    unhide = {p.resolve() for p in paths(base.unhide + role.unhide, relative_to_home=True)}
    deny = [d for d in deny if d.resolve() not in unhide]
    network = role.network or base.network or "loopback"
    ports = sorted(set(dolt_ports(town, beads)) | set(base.ports) | set(role.ports))

    def pick(name: str, default: int) -> int:
        return getattr(role, name) or getattr(base, name) or default

    return SandboxPolicy(
        workdir=work, write=write, read=read, deny=deny, env=sandbox_env(environ, [*base.env, *role.env]),
        network=network, ports=ports, max_procs=pick("max_procs", 256), memory_mb=pick("memory_mb", 8192),
        file_mb=pick("file_mb", 1024), tmp_mb=pick("tmp_mb", 256))


def parse_bang(prompt: str) -> tuple[str | None, str] | None:
    """`(sender, command)` for a `!command` prompt (sender None when typed without a `[from X]`), else None."""
    m = re.match(r"^(?:\[from ([^\]]*)\]\s*)?!", prompt)
    if not m:
        return None
    return m.group(1), prompt[m.end():].strip()


def bang_refusal(sender: str | None, settings: AgentSettings) -> str | None:
    """Why a `!command` from `sender` may not run (None when it may)."""
    bang = settings.bang_commands
    if sender is None:
        return None if bang.keyboard else "commands typed as !command are switched off (agent.bang_commands.keyboard)"
    if sender in bang.allow_from:
        return None
    allowed = ", ".join(bang.allow_from) or "nobody"
    return (f"a nudge from {sender} may not run commands (agent.bang_commands.allow_from in settings/gt-ext.json: "
            f"{allowed})")
