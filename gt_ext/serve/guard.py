"""The policy check on top of the sandbox: refuse, with a reason the model can read, commands that
Gas Town forbids an agent to run.

The boundary is the bubblewrap sandbox (`gt_ext.serve.sandbox`): a shell line cannot be judged
from its text (`$x -rf ..`, `$(echo sudo)`, a symlink made first all pass any reading of it), so
this check is not what keeps a command inside the work dir. It exists for what the sandbox allows
but Gas Town does not: destructive git on the work repo and on remotes a role may reach, mass
kills, and plain mistakes, refused before they run with a reason the model learns from.

Checked per simple command after splitting on shell operators (`;`, `&&`, `||`, `|`, newlines);
wrappers (`env`, `nice -n N`, `timeout`, `setsid`, `flock`, `if`/`then`/`do`, ...) are looked
through, and `bash -c`/`-lc`, `eval`, `xargs` and `find -exec` are checked through their payload.
The rules:

- no `pkill` / `killall` / `kill -1`-style mass kills, no `tmux kill-server`/`kill-session`;
- no force pushes (`--force` and any abbreviation of it, `--force-with-lease`, `-f` in a bundle,
  `+refspec`, `--mirror`, `--delete`, `--prune`, `:branch`), also through a git alias (from `-c`, from
  `git config alias.*`, or defined in the repo's config);
- no deleting (`rm`, `rmdir`, `shred`, `unlink`, `find -delete`, `git clean`) outside the work dir,
  no `git -C DIR` outside it for clean, no `dd of=` outside it;
- no `sudo`, `su`, `shutdown`/`reboot`, `mkfs`, `chmod`/`chown` on `/` or home;
- no `git reset --hard` onto a remote branch.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

SEPARATORS = {";", "&&", "||", "|", "&", "\n", "|&", "(", ")"}
NEVER = {
    "pkill": "pkill kills processes by name, including other agents' (Gas Town forbids it; kill your own PID)",
    "killall": "killall kills processes by name, including other agents' (Gas Town forbids it)",
    "sudo": "agents do not escalate privileges",
    "doas": "agents do not escalate privileges",
    "su": "agents do not switch users",
    "shutdown": "agents do not power off the machine",
    "reboot": "agents do not reboot the machine",
    "halt": "agents do not halt the machine",
    "poweroff": "agents do not power off the machine",
    "mkfs": "agents do not format disks",
}
DELETERS = {"rm", "rmdir", "shred", "unlink"}
SHELLS = {"bash", "sh", "zsh", "dash", "ksh"}
# Wrappers that run the rest of the line as a command: name -> options that take a value.
WRAPPERS = {
    "env": {"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}, "command": set(), "builtin": set(),
    "exec": {"-a"}, "nohup": set(), "time": {"-f", "-o"}, "nice": {"-n", "--adjustment"}, "stdbuf": {"-i", "-o", "-e"},
    "setsid": set(), "ionice": {"-c", "-n", "-p", "-P", "-u"}, "chrt": set(), "taskset": set(), "unbuffer": set(),
    "catchsegv": set(), "strace": {"-o", "-e", "-p", "-s"}, "ltrace": {"-o", "-e"}, "chronic": set(),
}
KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time", "coproc"}
PUSH_DESTRUCTIVE = ("--force", "--force-with-lease", "--force-if-includes", "--mirror", "--delete", "--prune")
MAX_DEPTH = 6


def split_commands(command: str) -> list[list[str]]:
    """Split a shell line into simple commands (lists of words). Raises ValueError on bad quoting."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
    lex.whitespace_split = True
    lex.commenters = ""
    cmds: list[list[str]] = [[]]
    for tok in lex:
        if tok in SEPARATORS or set(tok) <= set(";&|()"):
            cmds.append([])
        else:
            cmds[-1].append(tok)
    return [c for c in cmds if c]


def check(command: str, workdir: str | os.PathLike, _depth: int = 0) -> str | None:
    """Return None if `command` may run in `workdir`, else a one-line reason it is refused."""
    if not command.strip():
        return "empty command"
    if _depth > MAX_DEPTH:
        return "refused: commands nested too deeply to check"
    for line in command.splitlines():
        try:
            cmds = split_commands(line)
        except ValueError as e:
            return f"cannot parse the command ({e})"
        for words in cmds:
            reason = _check_simple(words, Path(workdir), _depth)
            if reason:
                return reason
    return None


def _strip_prefixes(words: list[str]) -> list[str]:
    """Drop `VAR=value`, shell keywords and wrappers (with their options) in front of the real command."""
    i = 0
    while i < len(words):
        w = words[i]
        name = os.path.basename(w)
        if "=" in w and not w.startswith("-") and w.split("=", 1)[0].isidentifier():
            i += 1
        elif w in KEYWORDS:
            i += 1
        elif name in WRAPPERS:
            valued = WRAPPERS[name]
            i += 1
            while i < len(words) and (words[i].startswith("-") or (name == "env" and "=" in words[i])):
                i += 2 if words[i] in valued else 1
            if name in ("chrt", "taskset") and i < len(words):
                i += 1  # the priority / CPU mask
        elif name == "timeout":
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 2 if words[i] in ("-s", "--signal", "-k", "--kill-after") else 1
            i += 1  # the duration
        elif name == "flock":
            i += 1
            while i < len(words) and words[i].startswith("-") and words[i] not in ("-c", "--command"):
                i += 2 if words[i] in ("-w", "--timeout", "-E", "--conflict-exit-code") else 1
            i += 1  # the lock file
        else:
            break
    return words[i:]


def _shell_payload(args: list[str]) -> str | None:
    """The script of `bash -c SCRIPT` / `-lc` / `-ec` ... (None when there is no -c)."""
    for j, a in enumerate(args):
        if a.startswith("-") and not a.startswith("--") and "c" in a[1:]:
            rest = [x for x in args[j + 1:] if not x.startswith("-")]
            return rest[0] if rest else None
        if not a.startswith("-") and not a.startswith("+"):
            return None  # a script file: its text is not here to check
    return None


def _check_simple(words: list[str], workdir: Path, depth: int = 0) -> str | None:
    words = _strip_prefixes(words)
    if not words:
        return None
    prog = os.path.basename(words[0])
    args = words[1:]
    if prog in NEVER or prog.startswith("mkfs."):
        return f"refused: {prog}: {NEVER.get(prog, NEVER['mkfs'])}"
    if prog in ("-c", "--command"):  # what `flock FILE -c SCRIPT` leaves
        return check(args[0], workdir, depth + 1) if args else None
    if prog in SHELLS:
        payload = _shell_payload(args)
        return check(payload, workdir, depth + 1) if payload else None
    if prog == "eval":
        return check(" ".join(args), workdir, depth + 1)
    if prog == "xargs":
        i = 0
        while i < len(args) and args[i].startswith("-"):
            i += 2 if args[i] in ("-I", "-n", "-P", "-L", "-d", "-E", "-s", "-a") else 1
        return _check_simple(args[i:], workdir, depth + 1) if args[i:] else None
    if prog == "kill":
        targets = [a for a in args if not a.startswith("-") or a.lstrip("-").isdigit()]
        if any(t in ("-1", "0", "-0") for t in args) or any(t.startswith("-") and t[1:].isdigit() and int(t[1:]) > 64
                                                             for t in targets):
            return "refused: kill of a process group or of every process (Gas Town forbids mass kills)"
    if prog == "tmux" and any(a in ("kill-server", "kill-session") for a in args):
        return "refused: tmux kill-server/kill-session ends other agents' sessions (Gas Town forbids it)"
    if prog == "git":
        return _check_git(args, workdir, depth)
    if prog in DELETERS:
        return _check_paths(prog, [a for a in args if not a.startswith("-")], workdir)
    if prog == "find":
        return _check_find(args, workdir, depth)
    if prog == "dd":
        outs = [a[3:] for a in args if a.startswith("of=")]
        if any(o.startswith("/dev/") for o in outs):
            return "refused: dd onto a device"
        return _check_paths("dd of=", outs, workdir)
    if prog in ("chmod", "chown") and any(a == "/" or a.startswith("/") and Path(a) in (Path("/"), Path.home())
                                          for a in args):
        return f"refused: {prog} on / or the home folder"
    return None


def _check_find(args: list[str], workdir: Path, depth: int) -> str | None:
    roots = [a for a in args[:next((i for i, a in enumerate(args) if a.startswith(("-", "(", "!"))), len(args))]]
    roots = roots or ["."]
    if "-delete" in args:
        reason = _check_paths("find -delete", roots, workdir)
        if reason:
            return reason
    for i, a in enumerate(args):
        if a in ("-exec", "-execdir", "-ok", "-okdir"):
            end = next((j for j in range(i + 1, len(args)) if args[j] in (";", "+", "\\;")), len(args))
            sub = [w for w in args[i + 1:end] if w != "{}"]
            if sub and os.path.basename(sub[0]) in DELETERS:
                reason = _check_paths(f"find {a} {sub[0]}", roots, workdir)
                if reason:
                    return reason
            reason = _check_simple(sub, workdir, depth + 1) if sub else None
            if reason:
                return reason
    return None


def _git_alias(name: str, config_args: list[str], cwd: Path) -> str | None:
    """The expansion of git alias `name`: from `-c alias.NAME=...` on the line, else the repo's config."""
    for kv in config_args:
        key, _, val = kv.partition("=")
        if key.lower() == f"alias.{name.lower()}":
            return val
    if not cwd.is_dir():
        return None
    try:
        res = subprocess.run(["git", "config", "--get", f"alias.{name}"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def _check_git(args: list[str], workdir: Path, depth: int = 0) -> str | None:
    # Global options (`git -C dir -c k=v push`) come before the subcommand.
    i, repo, config = 0, workdir, []
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        if a in ("-C", "-c", "--git-dir", "--work-tree", "--namespace") and i + 1 < len(args):
            if a == "-C":
                repo = (repo / args[i + 1]).resolve() if not os.path.isabs(args[i + 1]) else Path(args[i + 1])
            elif a == "-c":
                config.append(args[i + 1])
            i += 2
        else:
            i += 1
    if i >= len(args):
        return None
    sub, rest = args[i], args[i + 1:]
    for kv in config:  # `-c alias.x=...` defines what `git x` runs
        if kv.lower().startswith("alias."):
            reason = _check_alias_value(kv.partition("=")[2], workdir, depth)
            if reason:
                return reason
    if sub == "config":
        vals = [a for a in rest if not a.startswith("-")]
        if len(vals) >= 2 and vals[0].lower().startswith("alias."):
            return _check_alias_value(" ".join(vals[1:]), workdir, depth)
        return None
    if sub == "push":
        for a in rest:
            name = a.split("=", 1)[0]
            if a.startswith("--") and len(name) > 3 and any(o.startswith(name) for o in PUSH_DESTRUCTIVE):
                return f"refused: git push {a}: Gas Town never force-pushes or deletes remote branches"
            if a.startswith("-") and not a.startswith("--") and ("f" in a[1:] or "d" in a[1:]):
                return f"refused: git push {a}: Gas Town never force-pushes or deletes remote branches"
            if a.startswith("+") or (":" in a and a.split(":", 1)[0] == "" and not a.startswith("-")):
                return f"refused: git push {a}: a +refspec force-pushes and :branch deletes"
        return None
    if sub == "clean":
        if repo != workdir and workdir not in repo.parents:
            return f"refused: git -C {repo} clean: outside the work dir {workdir}"
        if any(a.startswith("-") and "f" in a.lstrip("-") for a in rest):
            paths = [a for a in rest if not a.startswith("-")]
            return _check_paths("git clean", [str(repo / p) for p in paths] or [str(repo)], workdir)
        return None
    if sub == "reset":
        if "--hard" in rest and any(a.startswith(("origin/", "upstream/", "@{u", "@{upstream")) for a in rest):
            return "refused: git reset --hard onto a remote branch throws away local commits"
        return None
    if depth < MAX_DEPTH and sub not in KNOWN_GIT_COMMANDS:
        alias = _git_alias(sub, config, repo)
        if alias:
            reason = _check_alias_value(alias, workdir, depth, rest)
            if reason:
                return f"{reason} (through the git alias {sub!r})"
    return None


def _check_alias_value(value: str, workdir: Path, depth: int, rest: list[str] | None = None) -> str | None:
    value = value.strip()
    if value.startswith("!"):
        return check(value[1:] + (" " + shlex.join(rest) if rest else ""), workdir, depth + 1)
    try:
        words = shlex.split(value)
    except ValueError:
        return f"refused: git alias {value!r} cannot be parsed"
    return _check_git(words + (rest or []), workdir, depth + 1)


def _check_paths(what: str, paths: list[str], workdir: Path) -> str | None:
    root = workdir.resolve()
    for p in paths:
        if any(ch in p for ch in "*?[") and p.startswith("/"):
            return f"refused: {what} {p}: wildcards over absolute paths"
        target = Path(os.path.expanduser(p))
        target = (target if target.is_absolute() else root / target).resolve()
        if target == root and what in ("rm", "rmdir", "shred"):
            return f"refused: {what} {p}: that is the work dir itself"
        if target != root and root not in target.parents:
            return f"refused: {what} {p}: outside the work dir {root}"
    return None


# git's own subcommands (porcelain and the common plumbing): anything else may be an alias.
KNOWN_GIT_COMMANDS = frozenset("""
add am annotate apply archive bisect blame branch bundle cat-file check-attr check-ignore checkout
cherry cherry-pick citool clean clone commit commit-tree config count-objects describe diff diff-files
diff-index diff-tree difftool fetch for-each-ref format-patch fsck gc grep gui hash-object help init
instaweb log ls-files ls-remote ls-tree merge merge-base mergetool mv notes pull push range-diff rebase
reflog remote repack replace request-pull reset restore rev-list rev-parse revert rm shortlog show
show-branch show-ref sparse-checkout stash status submodule switch symbolic-ref tag update-index
update-ref var verify-commit verify-tag version whatchanged worktree write-tree maintenance
""".split())
