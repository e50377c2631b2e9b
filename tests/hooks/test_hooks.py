import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gt_ext.cli import main
from gt_ext.corpus.collect import process_spool
from gt_ext.corpus.store import Store
from gt_ext.errors import GtExtError
from gt_ext.gastown.hooks import default_gt_home
from gt_ext.hooks_cli import MARKER, PI_EXTENSION_NAME, PI_MARKER, install, status
from tests.corpus.helpers import add_session_events, make_town_dirs, write_transcript

REPO_HOOK = Path(__file__).resolve().parents[2] / "hooks" / "on_close"


@pytest.fixture(autouse=True)
def _no_real_pi_or_gt_home(tmp_path_factory, monkeypatch):
    """Installs in these tests never reach this machine's own ~/.pi or ~/.gt."""
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(tmp_path_factory.mktemp("no-pi") / "agent"))
    monkeypatch.delenv("GT_HOME", raising=False)
    monkeypatch.delenv("GT_EXT_GT_HOME", raising=False)


def _file_town(tmp_path: Path) -> Path:
    town = make_town_dirs(tmp_path / "town")
    (town / "mayor" / "rigs.json").write_text(json.dumps({"version": 1, "rigs": {"demo": {"beads": {"prefix": "dm"}}}}))
    (town / ".beads").mkdir()
    (town / "demo" / "mayor" / "rig" / ".beads").mkdir(parents=True)
    return town


def test_install_into_town_and_rig_beads_and_chain(tmp_path):
    town = _file_town(tmp_path)
    rig_hooks = town / "demo" / "mayor" / "rig" / ".beads" / "hooks"
    rig_hooks.mkdir()
    marker = tmp_path / "old-hook-ran"
    old = rig_hooks / "on_close"
    old.write_text(f"#!/bin/sh\ncat > {marker}\necho >> {marker}\necho \"$@\" >> {marker}\n")
    old.chmod(0o755)
    rep = install(town, gt_home=tmp_path / "gt")
    assert rep["beads"] == {"demo": "chained", "hq": "installed"}
    assert (rig_hooks / "on_close.chained").is_file()
    # Idempotent: a second install updates ours and never chains ours to itself.
    assert install(town, gt_home=tmp_path / "gt")["beads"] == {"demo": "updated", "hq": "updated"}
    assert MARKER in (rig_hooks / "on_close").read_text()
    # The hook spools and the chained hook still gets the same argv and stdin.
    issue = {"id": "dm-1", "status": "closed"}
    r = subprocess.run([str(rig_hooks / "on_close"), "dm-1", "close"], input=json.dumps(issue).encode(),
                       env={"PATH": os.environ["PATH"], "GT_EXT_NO_AUTOPROCESS": "1"})
    assert r.returncode == 0
    assert json.loads(marker.read_text().splitlines()[0]) == issue and "dm-1 close" in marker.read_text()
    [spooled] = list((town / ".corpus" / "spool").glob("*.json"))
    ev = json.loads(spooled.read_text())
    assert ev["kind"] == "bead_close" and ev["payload"] == issue and ev["argv"] == ["dm-1", "close"]
    assert ev["beads_dir"] == str(rig_hooks.parent)
    assert status(town)["beads"]["demo"] == {"on_close": "ours", "on_create": "ours", "on_update": "ours",
                                             "chained": True, "rag": True}
    # ... and queued a RAG reindex of the bead (ids and paths only).
    [rag_ev] = [json.loads(p.read_text()) for p in (town / ".rag" / "spool").glob("*.json")]
    assert {k: rag_ev[k] for k in ("kind", "op", "id", "beads_dir")} == {
        "kind": "bead", "op": "close", "id": "dm-1", "beads_dir": str(rig_hooks.parent)}


def test_create_and_update_queue_rag_events_and_a_failing_spool_never_blocks_bd(tmp_path):
    from gt_ext.rag.queue import pending, read_queued

    town = _file_town(tmp_path)
    hooks = town / ".beads" / "hooks"
    hooks.mkdir()
    marker = tmp_path / "foreign-update-ran"
    (hooks / "on_update").write_text(f"#!/bin/sh\necho \"$@\" > {marker}\n")
    (hooks / "on_update").chmod(0o755)
    rep = install(town, gt_home=tmp_path / "gt", claude_stop=False)
    assert rep["rag"]["hooks"]["hq"] == {"on_create": "installed", "on_update": "chained"}
    env = {"PATH": os.environ["PATH"], "GT_EXT_NO_AUTOPROCESS": "1"}
    for hook, op in (("on_create", "create"), ("on_update", "update")):
        r = subprocess.run([str(hooks / hook), "hq-7", op], input=b'{"id": "hq-7", "title": "t"}', env=env)
        assert r.returncode == 0
    assert [(e["op"], e["id"]) for e in read_queued(pending(town))] == [("create", "hq-7"), ("update", "hq-7")]
    assert marker.read_text().strip() == "hq-7 update"  # the foreign hook still runs
    assert not (town / ".corpus" / "spool").exists() or not list((town / ".corpus" / "spool").glob("*.json"))
    # A broken corpus spool (its folder is a file) and a broken RAG queue: bd still gets exit 0 and
    # the chained hook still runs; the hook says what failed on stderr.
    (hooks / ".gt-ext-spool").write_text(str(hooks / "on_create") + "/spool\n")
    (hooks / ".gt-ext-rag").write_text(str(hooks / "on_create") + "/rag\n")
    (hooks / ".gt-ext-pending").write_text("")  # and no fallback next to the hook either
    (hooks / ".gt-ext-rag-pending").write_text("")
    (hooks / "on_close.chained").write_text(f"#!/bin/sh\necho closed > {marker}\n")
    (hooks / "on_close.chained").chmod(0o755)
    r = subprocess.run([str(hooks / "on_close"), "hq-7", "close"], input=b'{"id": "hq-7"}', env=env,
                       capture_output=True)
    assert r.returncode == 0 and marker.read_text().strip() == "closed"
    assert b"could not spool" in r.stderr and b"could not queue a RAG reindex" in r.stderr
    # --no-rag: no RAG events from bd hooks.
    install(town, gt_home=tmp_path / "gt", claude_stop=False, rag=False)
    assert not (hooks / ".gt-ext-rag").exists() and status(town)["beads"]["hq"]["rag"] is False


def test_claude_stop_override_keeps_other_entries(tmp_path):
    town = _file_town(tmp_path)
    gt = tmp_path / "gt"
    (gt / "hooks-overrides").mkdir(parents=True)
    mine = {"Stop": [{"matcher": "", "hooks": [{"type": "command", "command": "gt costs record"}]}],
            "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "gt tap guard x"}]}]}
    (gt / "hooks-overrides" / "witness.json").write_text(json.dumps(mine))
    install(town, gt_home=gt)
    install(town, gt_home=gt)
    data = json.loads((gt / "hooks-overrides" / "witness.json").read_text())
    assert data["PreToolUse"] == mine["PreToolUse"]
    assert data["Stop"][0] == mine["Stop"][0] and len(data["Stop"]) == 2
    cmd = data["Stop"][1]["hooks"][0]["command"]
    assert cmd.endswith("session_shutdown") and Path(cmd).is_file()
    assert json.loads((gt / "hooks-overrides" / "polecats.json").read_text())["Stop"][0]["hooks"][0]["command"] == cmd
    # The Claude Stop hook spools the transcript path from its stdin and prints nothing.
    r = subprocess.run([cmd], input=json.dumps({"session_id": "s1", "transcript_path": "/x/s1.jsonl",
                                                "hook_event_name": "Stop"}).encode(), capture_output=True,
                       env={"PATH": os.environ["PATH"], "GT_ROLE": "witness", "GT_RIG": "demo",
                            "GT_EXT_NO_AUTOPROCESS": "1"})
    assert r.returncode == 0 and r.stdout == b""
    [ev] = [json.loads(p.read_text()) for p in (town / ".corpus" / "spool").glob("*.json")]
    assert ev["kind"] == "session_stop" and ev["payload"]["session_id"] == "s1"
    assert ev["env"] == {"GT_ROLE": "witness", "GT_RIG": "demo"}


def test_hook_imports_no_torch_and_no_project_code(tmp_path):
    town = _file_town(tmp_path)
    install(town, gt_home=tmp_path / "gt", claude_stop=False)
    hook = town / ".beads" / "hooks" / "on_close"
    r = subprocess.run([sys.executable, "-X", "importtime", str(hook), "hq-1", "close"], input=b"{}",
                       capture_output=True, env={"PATH": os.environ["PATH"], "GT_EXT_NO_AUTOPROCESS": "1"})
    assert r.returncode == 0
    imported = r.stderr.decode()
    assert "torch" not in imported and "gt_ext" not in imported and "detect_secrets" not in imported


def test_bad_town_and_broken_override_are_clear_errors(tmp_path, capsys):
    assert main(["hooks", "install", "--town", str(tmp_path)]) == 2
    assert "not a Gas Town root" in capsys.readouterr().err
    town = _file_town(tmp_path)
    (tmp_path / "gt" / "hooks-overrides").mkdir(parents=True)
    (tmp_path / "gt" / "hooks-overrides" / "mayor.json").write_text("{oops")
    with pytest.raises(GtExtError, match=r"mayor.json:1: invalid JSON"):
        install(town, gt_home=tmp_path / "gt")


@pytest.mark.integration
def test_real_bd_close_lands_in_corpus_and_20_at_once_lose_nothing(beads_dir, bd_bin, tmp_path):
    from gt_ext.gastown.bd import Bd
    from gt_ext.gastown.testing import isolated_env

    town = make_town_dirs(beads_dir.parent)
    env = isolated_env(tmp_path / "home", {"GT_EXT_CLAUDE_PROJECTS": str(tmp_path / "projects")})
    install(town, gt_home=tmp_path / "gt", claude_stop=False)
    bd = Bd(beads_dir, bd_bin, env=env)
    projects = tmp_path / "projects"
    ids = []
    for i in range(20):
        actor = f"demo/polecats/p{i}"
        iss = bd.create(f"task {i}", assignee=actor, labels=["task:git-workflow"])
        cwd = str(town / actor)
        write_transcript(projects, f"sess-{i}", cwd, f"Run the bead {iss.id} on your hook.",
                         [(f"Reading hook {i}.", "gt hook", f"{iss.id}: task {i}; token ghp_{'Ab1' * 12}"),
                          (f"Testing change {i}.", f"make test K={i}", "ok")])
        add_session_events(town, actor, f"sess-{i}", cwd, iss.id)
        ids.append(iss.id)
    # One close first: it must show up, scrubbed and tagged.
    # One close first: the hook spools and starts the processor; nobody runs `corpus process`.
    bd.close(ids[0], reason="done")
    with Store.open(town / ".corpus") as st:
        _wait_for(lambda: st.count() >= 1, limit=120)
        [ex] = st.query()
        assert ex.bead == ids[0] and ex.role == "polecat" and ex.outcome == "success" and ex.rig == "demo"
        assert "ghp_Ab1" not in json.dumps(ex.messages) and "<SECRET:github_token>" in json.dumps(ex.messages)
    # Then the other 19 in one go: bd fires 19 hooks at once, each spooling and triggering.
    subprocess.run([bd_bin, "close", *ids[1:], "--reason", "done", "--json"], cwd=town, env=env | {"BEADS_DIR": str(beads_dir)},
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    with Store.open(town / ".corpus") as st:
        _wait_for(lambda: st.count() >= 20, limit=180)
        assert process_spool(st, town, projects).stored == {}  # nothing was left behind
        assert sorted(e.bead for e in st.query()) == sorted(ids) and st.count() == 20
        assert list((town / ".corpus" / "spool").glob("*.json")) == []


def test_auto_process_after_close(tmp_path):
    town = _file_town(tmp_path)
    projects = tmp_path / "projects"
    actor = "demo/polecats/nux"
    write_transcript(projects, "s-auto", str(town / actor), "Run the bead dm-5 on your hook.",
                     [("Reading the hook.", "gt hook", "dm-5: add a health endpoint")])
    add_session_events(town, actor, "s-auto", str(town / actor), "dm-5")
    install(town, gt_home=tmp_path / "gt", claude_stop=False)
    hook = town / "demo" / "mayor" / "rig" / ".beads" / "hooks" / "on_close"
    issue = {"id": "dm-5", "status": "closed", "close_reason": "done", "assignee": actor}
    r = subprocess.run([str(hook), "dm-5", "close"], input=json.dumps(issue).encode(),
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GT_EXT_CLAUDE_PROJECTS": str(projects)})
    assert r.returncode == 0
    with Store.open(town / ".corpus") as st:
        _wait_for(lambda: st.count() >= 1)
        [ex] = st.query()
        assert (ex.bead, ex.role, ex.rig, ex.session) == ("dm-5", "polecat", "demo", "s-auto")
    _wait_for(lambda: not list((town / ".corpus" / "spool").glob("*.json")))
    assert "stored" in (town / ".corpus" / "process.log").read_text()


def _wait_for(cond, limit: float = 60.0) -> None:
    """Poll until `cond()` (bd runs hooks in the background); fail after `limit` seconds."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            pytest.fail("hook output did not arrive")
        time.sleep(0.2)


def test_stop_override_joins_an_existing_star_entry(tmp_path):
    # gt refuses an override file with two entries of one matcher ("duplicate matcher"), which
    # would break `gt hooks sync` for that role: our command joins the "*" entry already there.
    town = _file_town(tmp_path)
    gt = tmp_path / "gt"
    (gt / "hooks-overrides").mkdir(parents=True)
    theirs = {"Stop": [{"matcher": "*", "hooks": [{"type": "command", "command": "notify-send done"}]}]}
    (gt / "hooks-overrides" / "crew.json").write_text(json.dumps(theirs))
    install(town, gt_home=gt)
    assert install(town, gt_home=gt)["overrides"]["crew"] == "present"
    [entry] = json.loads((gt / "hooks-overrides" / "crew.json").read_text())["Stop"]
    assert entry["matcher"] == "*" and [h["command"] for h in entry["hooks"]][0] == "notify-send done"
    assert entry["hooks"][1]["command"].endswith("session_shutdown") and len(entry["hooks"]) == 2


def test_gt_home_is_found_as_gt_finds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_gt_home() == tmp_path / "home" / ".gt"
    monkeypatch.setenv("GT_HOME", str(tmp_path / "gth"))  # gt reads $GT_HOME/.gt/hooks-overrides
    assert default_gt_home() == tmp_path / "gth" / ".gt"
    monkeypatch.setenv("GT_EXT_GT_HOME", str(tmp_path / "explicit"))
    assert default_gt_home() == tmp_path / "explicit"


def test_pi_extension_install_is_idempotent_and_keeps_other_extensions(tmp_path, monkeypatch):
    town = _file_town(tmp_path)
    agent = tmp_path / "pi-agent"
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(agent))
    # No pi agent folder: nothing is installed unless asked for.
    assert install(town, gt_home=tmp_path / "gt")["pi"] is None
    assert not agent.exists()
    (agent / "extensions").mkdir(parents=True)
    other = agent / "extensions" / "mine.ts"
    other.write_text("export default function (pi) {}\n")
    rep = install(town, gt_home=tmp_path / "gt")  # the folder exists now: on by default
    ext = agent / "extensions" / PI_EXTENSION_NAME
    assert rep["pi"] == {"extension": str(ext), "state": "installed"}
    assert PI_MARKER in ext.read_text() and 'pi.on("session_shutdown"' in ext.read_text()
    assert install(town, gt_home=tmp_path / "gt")["pi"]["state"] == "present"
    ext.write_text(f"// {PI_MARKER}\n// an older version\n")
    assert install(town, gt_home=tmp_path / "gt")["pi"]["state"] == "updated"
    assert other.read_text() == "export default function (pi) {}\n"
    assert install(town, gt_home=tmp_path / "gt", pi=False)["pi"] is None
    ext.write_text("export default function (pi) {} // someone else's\n")
    with pytest.raises(GtExtError, match="is not ours"):
        install(town, gt_home=tmp_path / "gt")
    # --pi forces it where no folder exists yet; the CLI takes --pi-dir.
    assert main(["hooks", "install", "--town", str(town), "--gt-home", str(tmp_path / "gt"), "--pi",
                 "--pi-dir", str(tmp_path / "fresh")]) == 0
    assert (tmp_path / "fresh" / "extensions" / PI_EXTENSION_NAME).is_file()


_PI_HOST = r"""
// Loads the installed extension the way pi does (default export called with pi's API object) and
// fires session_shutdown. pi.exec is pi's documented {code, stdout, stderr} runner; stdin is left
// open as a pipe, so a hook that read stdin here would never return.
import { spawn } from "node:child_process";
const [ext, sessionFile] = process.argv.slice(2);
const handlers = {};
const pi = {
  on: (name, fn) => { handlers[name] = fn; },
  exec: (cmd, args) => new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    p.stdout.on("data", (d) => { stdout += d; });
    p.stderr.on("data", (d) => { stderr += d; });
    p.on("error", reject);
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  }),
};
(await import(ext)).default(pi);
const ctx = { cwd: process.cwd(), sessionManager: { getSessionFile: () => sessionFile || undefined } };
await handlers["session_shutdown"]({ type: "session_shutdown", reason: "quit" }, ctx);
console.log("shutdown handled");
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_pi_extension_spools_the_session_file(tmp_path):
    town = _file_town(tmp_path)
    agent = tmp_path / "pi-agent"
    install(town, gt_home=tmp_path / "gt", pi=True, pi_dir=agent)
    # pi loads .ts through jiti; the file is plain JavaScript as well, so node runs it as a module.
    ext = tmp_path / "ext.mjs"
    ext.write_text((agent / "extensions" / PI_EXTENSION_NAME).read_text())
    host = tmp_path / "host.mjs"
    host.write_text(_PI_HOST)
    session = tmp_path / "sessions" / "2026-11-29_abc.jsonl"
    spool = town / ".corpus" / "spool"

    def shutdown(env_extra: dict[str, str], session_file: str) -> list[dict]:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GT_EXT_NO_AUTOPROCESS": "1", **env_extra}
        r = subprocess.run(["node", str(host), str(ext), session_file], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "shutdown handled" in r.stdout, r.stderr
        return [json.loads(p.read_text()) for p in sorted(spool.glob("*.json"))]

    assert shutdown({}, str(session)) == []  # not launched by gt: no town, nothing spooled
    assert shutdown({"GT_ROOT": str(town)}, "") == []  # an ephemeral session has no file
    [ev] = shutdown({"GT_ROOT": str(town), "GT_ROLE": "demo/polecats/nux", "GT_RIG": "demo"}, str(session))
    assert ev["kind"] == "session_stop" and ev["payload"] == {"transcript_path": str(session)}
    assert ev["argv"] == [str(session)] and ev["env"]["GT_ROLE"] == "demo/polecats/nux"


@pytest.mark.integration
def test_stop_hook_survives_real_gt_hooks_sync_and_spools_claude_stop(make_town, tmp_path):
    tt = make_town()
    if tt.mode != "gt":
        pytest.skip("town made without the real gt")
    root = tt.root
    env = {**tt.env, "PI_CODING_AGENT_DIR": str(tmp_path / "no-pi")}  # tt.env's HOME: gt reads ~/.gt there
    r = subprocess.run([sys.executable, "-m", "gt_ext.cli", "hooks", "install", "--town", str(root), "--json"],
                       env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    shutdown = rep["session_shutdown"]
    assert set(rep["overrides"].values()) == {"added"}
    assert Path(env["HOME"], ".gt", "hooks-overrides", "witness.json").is_file()
    targets = {"mayor": "mayor", "deacon": "deacon", "crew": "demo/crew", "polecat": "demo/polecats",
               "witness": "demo/witness", "refinery": "demo/refinery"}

    def stop_commands(rel: str) -> list[str]:
        settings = json.loads((root / rel / ".claude" / "settings.json").read_text())
        return [h["command"] for e in settings["hooks"]["Stop"] for h in e["hooks"]]

    for sync in (1, 2):  # the real `gt hooks sync`, twice: our entry is there and stays
        out = tt.gt("hooks", "sync").stdout
        assert "errors" not in out, out
        for role, rel in targets.items():
            cmds = stop_commands(rel)
            assert shutdown in cmds, (sync, role, cmds)
            assert len(cmds) >= 2, (role, cmds)  # gt's own Stop hook (costs record / stop check) is kept
        if sync == 2:
            assert "(0 created, 0 updated, 6 unchanged" in out, out
    # Claude Code runs the synced command through a shell, with its Stop JSON on stdin.
    projects = tmp_path / "projects"
    cwd = str(root / "demo" / "witness")
    transcript = write_transcript(projects, "sess-w1", cwd, "Patrol the demo rig.",
                                  [("Checking polecats.", "gt polecat list demo", "nux: working")])
    [cmd] = [c for c in stop_commands("demo/witness") if c == shutdown]
    stop = {"session_id": "sess-w1", "transcript_path": str(transcript), "cwd": cwd, "hook_event_name": "Stop",
            "stop_hook_active": False}
    r = subprocess.run(["sh", "-c", cmd], input=json.dumps(stop), capture_output=True, text=True, timeout=60, cwd=cwd,
                       env={**env, "GT_ROLE": "demo/witness", "GT_RIG": "demo", "GT_EXT_NO_AUTOPROCESS": "1"})
    assert r.returncode == 0 and r.stdout == "", r.stderr
    [ev] = [json.loads(p.read_text()) for p in (root / ".corpus" / "spool").glob("*.json")]
    assert ev["kind"] == "session_stop" and ev["payload"]["transcript_path"] == str(transcript)
    with Store.open(root / ".corpus") as st:
        process_spool(st, root, projects)
        [ex] = st.query()
        assert (ex.session, ex.role, ex.rig) == ("sess-w1", "witness", "demo")


@pytest.mark.integration
def test_hook_in_a_sandbox_leaves_ids_next_to_itself_and_processing_trusts_only_bd(beads_dir, bd_bin, tmp_path):
    """bd run by a sandboxed agent sees the town's spools read-only: the hook puts its events in
    `<beads>/hooks/.gt-ext-pending/` (and the RAG one in `.gt-ext-rag-pending/`); processing drains
    them, takes only the bead id and reads the issue again from bd; a forged stop event is refused."""
    from gt_ext.corpus.spool import PENDING_DIR, write_event
    from gt_ext.gastown.bd import Bd
    from gt_ext.gastown.testing import isolated_env
    from gt_ext.rag import queue

    town = make_town_dirs(beads_dir.parent)
    install(town, gt_home=tmp_path / "gt", claude_stop=False, auto_process=False)
    hooks = beads_dir / "hooks"
    blocked = tmp_path / "read-only-file"
    blocked.write_text("")
    (hooks / ".gt-ext-spool").write_text(f"{blocked}/spool\n")  # as unwritable as a hidden .corpus
    (hooks / ".gt-ext-rag").write_text(f"{blocked}/rag\n")
    env = isolated_env(tmp_path / "home")
    bd = Bd(beads_dir, bd_bin, env=env)
    actor = "demo/polecats/nux"
    iss = bd.create("task in a sandbox", assignee=actor)
    projects = tmp_path / "projects"
    write_transcript(projects, "s-box", str(town / actor), f"Run the bead {iss.id} on your hook.",
                     [("Reading the hook.", "gt hook", f"{iss.id}: task in a sandbox")])
    add_session_events(town, actor, "s-box", str(town / actor), iss.id)
    bd.close(iss.id, reason="done")
    _wait_for(lambda: len(list((hooks / PENDING_DIR).glob("*.json"))) == 1)
    _wait_for(lambda: len(queue.pending(town, [beads_dir])) >= 2)  # create + close queued for RAG
    # A command in the sandbox could write there too: a forged stop event naming any file.
    write_event(hooks / PENDING_DIR, "session_stop", {"session_id": "x", "transcript_path": "/etc/hostname"})
    with Store.open(town / ".corpus") as st:
        rep = process_spool(st, town, projects)
        assert [e for e in rep.errors if "refused" in e] and len(rep.errors) == 1, rep.errors
        [ex] = st.query()
        assert (ex.bead, ex.session, ex.outcome) == (iss.id, "s-box", "success")
    assert list((hooks / PENDING_DIR).glob("*.json")) == []


# --- issue #20: the bd hook spooled any stdin size (200 MB became a spool file) ------------------
def test_hook_caps_stdin_says_so_and_still_feeds_the_chained_hook(tmp_path):
    hooks = tmp_path / "beads" / "hooks"
    hooks.mkdir(parents=True)
    shutil.copy(REPO_HOOK, hooks / "on_close")
    got = tmp_path / "chained-got"
    (hooks / "on_close.chained").write_text(f"#!/bin/sh\nwc -c > {got}\n")
    (hooks / "on_close.chained").chmod(0o755)
    spool = tmp_path / "spool"
    big = b'{"id": "dm-1", "description": "' + b"x" * (3 << 20) + b'"}'  # 3 MiB, over the 1 MiB default cap
    r = subprocess.run([str(hooks / "on_close"), "dm-1", "close"], input=big, capture_output=True, timeout=60,
                       env={"PATH": os.environ["PATH"], "GT_EXT_SPOOL": str(spool), "GT_EXT_NO_AUTOPROCESS": "1"})
    assert r.returncode == 0, r.stderr
    [f] = spool.glob("*.json")
    assert f.stat().st_size < 4096  # nothing of the oversized stdin is kept
    ev = json.loads(f.read_text())
    assert ev["stdin"] == {"truncated": True, "limit_bytes": 1 << 20} and ev["payload"] is None
    assert int(got.read_text()) == len(big)  # the hook before ours still got all of it
    # The processor says what happened and still takes the bead id from argv.
    with Store.open(tmp_path / "corpus") as st:
        f.rename(st.spool_dir / f.name)
        rep = process_spool(st, None, tmp_path / "no-projects")
    assert any("was not spooled" in e for e in rep.errors) and rep.unresolved_beads == ["dm-1"]


def test_hook_cap_is_configurable_and_small_stdin_is_kept(tmp_path):
    spool = tmp_path / "spool"
    env = {"PATH": os.environ["PATH"], "GT_EXT_SPOOL": str(spool), "GT_EXT_NO_AUTOPROCESS": "1",
           "GT_EXT_HOOK_MAX_STDIN": "64"}
    subprocess.run([str(REPO_HOOK), "dm-2", "close"], input=b'{"id": "dm-2"}', env=env, check=True, timeout=60)
    subprocess.run([str(REPO_HOOK), "dm-3", "close"], input=b'{"id": "dm-3", "d": "' + b"y" * 100 + b'"}', env=env,
                   check=True, timeout=60)
    evs = sorted((json.loads(p.read_text()) for p in spool.glob("*.json")), key=lambda e: e["argv"][0])
    assert evs[0]["payload"] == {"id": "dm-2"} and "stdin" not in evs[0]
    assert evs[1]["payload"] is None and evs[1]["stdin"]["truncated"]


def test_hook_starts_no_processor_while_one_runs(tmp_path):
    """A processor holding its lock looks at its queue again when it ends: the hook queues its
    event and starts none (a `bd close` of hundreds of beads would start hundreds); once the lock is
    free it starts one again."""
    import fcntl

    hooks = tmp_path / "beads" / "hooks"
    hooks.mkdir(parents=True)
    shutil.copy(REPO_HOOK, hooks / "on_close")
    started = {"corpus": tmp_path / "corpus-started", "rag": tmp_path / "rag-started"}
    for what, sidecar in (("corpus", ".gt-ext-process"), ("rag", ".gt-ext-rag-process")):
        (hooks / sidecar).write_text(json.dumps([sys.executable, "-c", f"open({str(started[what])!r}, 'a').write('x')"]))
    (hooks / ".gt-ext-spool").write_text(f"{tmp_path / 'corpus' / 'spool'}\n")
    (hooks / ".gt-ext-rag").write_text(f"{tmp_path / 'rag' / 'spool'}\n")
    locks = [tmp_path / "corpus" / "process.lock", tmp_path / "rag" / "indexer.lock"]
    fds = []
    for p in locks:
        p.parent.mkdir(parents=True)
        fds.append(os.open(p, os.O_RDWR | os.O_CREAT))
        fcntl.flock(fds[-1], fcntl.LOCK_EX)  # "a processor runs"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    run = lambda bead: subprocess.run([str(hooks / "on_close"), bead, "close"], input=b'{"id": "%s"}' % bead.encode(),  # noqa: E731
                                      env=env, timeout=60, check=True)
    run("dm-1")
    for fd in fds:
        os.close(fd)
    assert len(list((tmp_path / "corpus" / "spool").glob("*.json"))) == 1  # queued all the same
    assert len(list((tmp_path / "rag" / "spool").glob("*.json"))) == 1
    run("dm-2")  # the locks are free: both processors start
    _wait_for(lambda: all(p.exists() for p in started.values()))
    time.sleep(1.0)  # a processor the first hook had started would have written by now
    assert {k: p.read_text() for k, p in started.items()} == {"corpus": "x", "rag": "x"}
