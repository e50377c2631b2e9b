"""The command guard: refuse shell commands that Gas Town forbids an agent to run, and say why.

Checked per simple command after splitting on shell operators (`;`, `&&`, `||`, `|`, newlines);
`bash -c '...'`, `sh -c`, `eval` and `xargs` are checked through their payload. The rules:

- no `pkill` / `killall` / `kill -1`-style mass kills (Gas Town agents end only their own processes);
- no force pushes (`git push --force`, `-f`, `--force-with-lease`, `+refspec`, `--mirror`, `--delete`);
- no deleting (`rm`, `rmdir`, `shred`, `unlink`, `find -delete`, `git clean`) outside the work dir;
- no `sudo`, `su`, `shutdown`/`reboot`, `mkfs`, `dd of=/dev/...`, `chmod`/`chown` on `/`;
- no history rewrites of shared branches (`git reset --hard origin/...`, `git push` to main with -f).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

SEPARATORS = {";", "&&", "||", "|", "&", "\n", "|&", "(", ")"}
NEVER = {
    "pkill": "pkill kills processes by name, including other agents' (Gas Town forbids it; kill your own PID)",
    "killall": "killall kills processes by name, including other agents' (Gas Town forbids it)",
    "sudo": "agents do not escalate privileges",
    "su": "agents do not switch users",
    "shutdown": "agents do not power off the machine",
    "reboot": "agents do not reboot the machine",
    "halt": "agents do not halt the machine",
    "poweroff": "agents do not power off the machine",
    "mkfs": "agents do not format disks",
}
DELETERS = {"rm", "rmdir", "shred", "unlink"}


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
    # Newlines separate commands too: shlex treats them as whitespace, so split on them first.
    return [c for c in cmds if c]


def check(command: str, workdir: str | os.PathLike) -> str | None:
    """Return None if `command` may run in `workdir`, else a one-line reason it is refused."""
    if not command.strip():
        return "empty command"
    for line in command.splitlines():
        try:
            cmds = split_commands(line)
        except ValueError as e:
            return f"cannot parse the command ({e})"
        for words in cmds:
            reason = _check_simple(words, Path(workdir))
            if reason:
                return reason
    return None


def _strip_prefixes(words: list[str]) -> list[str]:
    """Drop `VAR=value`, `env`, `command`, `nice`, `timeout N`, `exec` in front of the real command."""
    i = 0
    while i < len(words):
        w = words[i]
        if "=" in w and not w.startswith("-") and w.split("=", 1)[0].isidentifier():
            i += 1
        elif w in ("env", "command", "builtin", "exec", "nohup", "time", "nice", "stdbuf"):
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 1
        elif w == "timeout":
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 1
            i += 1  # the duration
        else:
            break
    return words[i:]


def _check_simple(words: list[str], workdir: Path) -> str | None:
    words = _strip_prefixes(words)
    if not words:
        return None
    prog = os.path.basename(words[0])
    args = words[1:]
    if prog in NEVER or prog.startswith("mkfs."):
        return f"refused: {prog}: {NEVER.get(prog, NEVER['mkfs'])}"
    if prog in ("bash", "sh", "zsh", "dash") and "-c" in args:
        i = args.index("-c")
        if i + 1 < len(args):
            return check(args[i + 1], workdir)
    if prog == "eval":
        return check(" ".join(args), workdir)
    if prog == "xargs":
        rest = [a for a in args if not a.startswith("-")]
        return _check_simple(rest, workdir) if rest else None
    if prog == "kill":
        targets = [a for a in args if not a.startswith("-") or a.lstrip("-").isdigit()]
        if any(t in ("-1", "0", "-0") for t in args) or any(t.startswith("-") and t[1:].isdigit() and int(t[1:]) > 64
                                                             for t in targets):
            return "refused: kill of a process group or of every process (Gas Town forbids mass kills)"
    if prog == "git":
        return _check_git(args, workdir)
    if prog in DELETERS:
        return _check_paths(prog, [a for a in args if not a.startswith("-")], workdir)
    if prog == "find" and ("-delete" in args or "-exec" in args and any(os.path.basename(a) in DELETERS for a in args)):
        roots = [a for a in args if not a.startswith("-")][:1] or ["."]
        return _check_paths("find -delete", roots, workdir)
    if prog == "dd" and any(a.startswith("of=/dev/") for a in args):
        return "refused: dd onto a device"
    if prog in ("chmod", "chown") and any(a == "/" or a.startswith("/") and Path(a) in (Path("/"), Path.home())
                                          for a in args):
        return f"refused: {prog} on / or the home folder"
    return None


def _check_git(args: list[str], workdir: Path) -> str | None:
    # Skip global options (`git -C dir push`) to find the subcommand.
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-C", "-c") else 1
    if i >= len(args):
        return None
    sub, rest = args[i], args[i + 1 :]
    if sub == "push":
        for a in rest:
            if a in ("-f", "--force", "--mirror", "--delete", "-d") or a.startswith("--force"):
                return f"refused: git push {a}: Gas Town never force-pushes or deletes remote branches"
            if a.startswith("-") and not a.startswith("--") and "f" in a[1:]:
                return f"refused: git push {a}: Gas Town never force-pushes"
            if a.startswith("+") or (":" in a and a.split(":", 1)[0] == "" and not a.startswith("-")):
                return f"refused: git push {a}: a +refspec force-pushes and :branch deletes"
    if sub == "clean" and any(a.startswith("-") and "f" in a.lstrip("-") for a in rest):
        paths = [a for a in rest if not a.startswith("-")]
        return _check_paths("git clean", paths or ["."], workdir)
    if sub == "reset" and "--hard" in rest and any(a.startswith(("origin/", "upstream/")) for a in rest):
        return "refused: git reset --hard onto a remote branch throws away local commits"
    return None


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
