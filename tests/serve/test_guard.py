"""The command guard refuses what Gas Town forbids and lets ordinary work through."""

from __future__ import annotations

import pytest

from gt_ext.serve.guard import check


@pytest.mark.parametrize(
    "cmd",
    [
        "pkill -f claude",
        "killall node",
        "sleep 1; pkill python",
        "echo hi && /usr/bin/killall x",
        "git push --force origin main",
        "git push -f",
        "git push origin +main",
        "git push --force-with-lease",
        "git push origin :feature",
        "git -C /tmp push --force",
        "rm -rf /",
        "rm -rf ../other-rig",
        "rm ~/notes.txt",
        "cd . && rm -rf /etc/passwd",
        "bash -c 'pkill gt'",
        "sh -c \"git push -f\"",
        "env FOO=1 pkill x",
        "sudo rm x",
        "kill -9 -1",
        "find / -name '*.log' -delete",
        "git clean -fdx /",
        "echo x | xargs rm -rf /var",
        "timeout 5 killall y",
        "rm -rf .",
        "dd if=/dev/zero of=/dev/sda",
        "git reset --hard origin/main",
        # Found against the old guard (issue #20); the sandbox contains them as well.
        "git push --forc origin main",
        "git push --force-w origin main",
        "git push -uf origin main",
        "git -c alias.p='push --force' p origin main",
        "git config alias.fp 'push --force'",
        "git config alias.zap '!pkill gt'",
        "nice -n 5 pkill x",
        "setsid killall x",
        "flock /tmp/l pkill x",
        "flock /tmp/l -c 'pkill x'",
        "if true; then pkill x; fi",
        "for p in 1; do killall x; done",
        "bash -lc 'rm -rf /'",
        "git -C / clean -fdx",
        "find . -exec rm -rf / \\;",
        "tmux kill-server",
        "dd if=/dev/zero of=/etc/passwd",
        "timeout -s KILL 5 killall x",
    ],
)
def test_refused(cmd, tmp_path):
    reason = check(cmd, tmp_path)
    assert reason and reason.startswith("refused"), (cmd, reason)


@pytest.mark.parametrize(
    "cmd",
    [
        "bd list --json",
        "bd create 'Fix the thing' -p 1 --json",
        "gt hook",
        "git push origin feature-x",
        "git status && git diff",
        "rm -rf build/",
        "rm notes.txt tmp/*.o",
        "find . -name '*.pyc' -delete",
        "kill 12345",
        "git clean -fd",
        "python -m pytest -q",
        "echo 'pkill is forbidden'",
        "git reset --hard HEAD~1",
        "nice -n 5 python -m pytest -q",
        "find . -name '*.o' -exec rm {} \\;",
        "dd if=/dev/zero of=blob bs=1 count=1",
        "git push --follow-tags origin feature-x",
        "git config user.name witness",
    ],
)
def test_allowed(cmd, tmp_path):
    assert check(cmd, tmp_path) is None, cmd


def test_unparseable_and_empty(tmp_path):
    assert "cannot parse" in check("echo 'unterminated", tmp_path)
    assert check("   ", tmp_path) == "empty command"


def test_alias_in_the_repo_config_is_expanded(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "config", "alias.fp", "push --force"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "config", "alias.st", "status --short"], check=True)
    assert "alias 'fp'" in check("git fp origin main", tmp_path)
    assert check("git st", tmp_path) is None
