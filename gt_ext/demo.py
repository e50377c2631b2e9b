"""`make demo`: the main job end to end on the embedded defaults, as a Gas Town user would run it.

    sample town (real gt/bd/dolt) -> hooks -> bead closes -> corpus (scrubbed) -> export
      -> `gt formula run train-role-model --set role=witness` (train, export, eval, register)
      -> eval of the base model -> `gt model deploy` -> one witness question through node0-inference
      -> the loop: that witness session back in the corpus (tagged, its model named)
      -> `gt model stale witness`: fresh; the demo edits CLAUDE.md; stale, one retrain job bead

Every stage is a user-facing command run as a subprocess (the `gt` shim for this project's own
`gt formula` / `gt model` commands, and `gt-ext`), so the demo exercises exactly what a user types;
Gas Town itself (real `gt`, `bd`) is driven through `gt_ext.gastown`, never the shim on PATH. Progress is kept in `demo-out/state.json`: a killed demo,
run again, skips the stages it finished and the training job resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gt_ext.atomic import atomic_write_json
from gt_ext.paths import cache_dir

console = Console(highlight=False)
ROLE = "witness"
BASE = "smollm2-135m-instruct"
# Sized for 2 CPU cores (see gt_ext/train/presets/witness_smollm2.yaml): a few minutes of training.
TRAIN_STEPS = 12
TRAIN_ARGS = ("lora.alpha=32 lora.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj] "
              "data.batch_size=2 data.max_val_examples=12 optim.lr=1e-3 optim.warmup_steps=2 "
              "eval_every=0 checkpoint_every=4 threads=2")
QUESTION = (
    "Patrol check for rig webapp: polecat furiosa has had no output for 45 minutes and its hook "
    "holds bead wa-k42. What do you do? Answer with one JSON object with keys action and reason."
)


def _bd_quote(text: str) -> str:
    """A double-quoted token for `bd batch` (backslash and quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Demo:
    """The demo's state: a folder, a town in it, and the figures each stage produced."""

    def __init__(self, out: Path, train_seconds: int):
        self.out = out.resolve()
        self.train_seconds = train_seconds
        self.state_path = self.out / "state.json"
        self.state: dict[str, Any] = {"done": [], "figures": {}, "timings": {}}
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
        self.venv_bin = Path(sys.executable).parent
        self.cache = cache_dir()
        self._server = None

    # -- plumbing -------------------------------------------------------------------------------
    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    @property
    def town(self) -> dict[str, Any]:
        return self.state["town"]

    def env(self) -> dict[str, str]:
        """Environment for every command: the town's, with our venv first on PATH."""
        env = dict(os.environ)
        env.update(self.town["env"])
        env["PATH"] = f"{self.venv_bin}{os.pathsep}{env.get('PATH', '')}"
        env["GT_TOWN_ROOT"] = self.town["root"]
        env["GT_EXT_CLAUDE_PROJECTS"] = str(self.out / "claude-projects")
        env["GT_EXT_JOBS_DIR"] = str(self.out / "jobs")
        env["GT_EXT_CACHE"] = str(self.cache)  # the town's HOME is a fresh one: keep the model cache
        env.setdefault("GT_EXT_LOG", "WARNING")
        return env

    def run(self, *argv: str, capture: bool = False, stdin: str | None = None, cwd: str | None = None,
            echo: bool = True) -> str:
        """Run a command of the project; a failure stops the demo with its output."""
        if echo:
            console.print(f"[dim]$ {' '.join(argv)}[/dim]")
        res = subprocess.run(list(argv), env=self.env(), cwd=cwd or self.town["root"], text=True,
                             input=stdin, capture_output=capture)
        if res.returncode != 0:
            if capture:
                sys.stderr.write((res.stdout or "")[-2000:] + (res.stderr or "")[-2000:])
            raise SystemExit(f"demo: `{' '.join(argv)}` exited {res.returncode}; run `make demo` again to resume")
        return res.stdout or ""

    def shim(self, *args: str, capture: bool = False) -> str:
        """This project's `gt` front door (the shim in our venv) with `args`, as a user types
        `gt formula ...` / `gt model ...`; refuses to run if that file is not our shim."""
        from gt_ext.gastown.binaries import is_shim

        front = self.venv_bin / "gt"
        if not is_shim(front):
            raise SystemExit(f"demo: {front} is not the gt-ext shim (run `gt-ext install-shim`)")
        console.print(f"[dim]$ gt {' '.join(args)}[/dim]")
        return self.run(str(front), *args, capture=capture, echo=False)

    def stage(self, name: str, title: str, fn: Callable[[], None]) -> None:
        """Run one stage unless a previous run finished it."""
        if name in self.state["done"]:
            console.print(f"[green]✓[/green] {title} [dim](done in an earlier run)[/dim]")
            return
        console.rule(f"[bold]{title}")
        t0 = time.monotonic()
        fn()
        self.state["timings"][name] = round(time.monotonic() - t0, 1)
        self.state["done"].append(name)
        self.save()
        console.print(f"[green]✓[/green] {title} [dim]({self.state['timings'][name]} s)[/dim]")

    # -- town -----------------------------------------------------------------------------------
    def build_town(self) -> None:
        from gt_ext.gastown.testing import make_town, remove_tree

        base = self.out / "town-base"
        if base.exists():
            remove_tree(base)  # a half-built town from a killed run
        base.mkdir(parents=True)
        tt = make_town(base, rig="webapp", prefix="wa")
        self._server = tt
        self.state["town"] = {"root": str(tt.root), "env": {k: v for k, v in tt.env.items() if k in (
            "HOME", "GT_DOLT_PORT", "GT_DOLT_HOST", "GT_TOWN_ROOT", "DOLT_ROOT_PATH", "GIT_CONFIG_GLOBAL",
            "XDG_CONFIG_HOME")}, "port": tt.dolt_port, "mode": tt.mode}
        self.state["figures"]["town"] = f"{tt.root} ({'real gt install' if tt.mode == 'gt' else 'gt file formats'})"

    def reopen_town(self) -> None:
        """Start the town's Dolt server again (a previous demo run stopped it at exit)."""
        from gt_ext.gastown.dolt import DoltClient, DoltServer

        try:
            with DoltClient(port=self.town["port"]) as c:
                c.query("SELECT 1")
            return
        except Exception:  # noqa: BLE001 - not running: start it below
            pass
        root = Path(self.town["root"])
        if self.town["mode"] == "gt":
            self.gt().run("dolt", "start")
        else:
            self._server = DoltServer(root / ".dolt-data", port=self.town["port"], env=self.env(),
                                      log_file=root / "daemon" / "dolt.log").start()

    def close_town(self) -> None:
        if self._server is None and "town" in self.state and self.town["mode"] == "gt":
            self.gt().run("dolt", "stop", check=False)
        elif self._server is not None:
            (self._server.close if hasattr(self._server, "close") else self._server.stop)()
        self._server = None

    def gt(self) -> Any:
        """The REAL gt for the demo town (`gt_ext.gastown.gt`: never the shim on PATH)."""
        from gt_ext.gastown.gt import Gt

        return Gt(self.town["root"], env=self.env())

    # -- stages ---------------------------------------------------------------------------------
    def bd(self) -> Any:
        """The real bd on the webapp rig's beads (where the sample work lives), with hooks on."""
        from gt_ext.gastown.bd import Bd
        from gt_ext.gastown.town import Town

        beads = Town(Path(self.town["root"])).rig("webapp").beads_dir
        if beads is None:
            raise SystemExit("demo: the sample town's rig webapp has no beads folder")
        return Bd(beads, env=self.env())

    def bd_batch(self, lines: list[str]) -> list[str]:
        """Run `bd batch` (one transaction) on the rig's beads and return each line's target id."""
        console.print(f"[dim]$ bd batch --json  # {len(lines)} commands[/dim]")
        out = self.bd().run("batch", input="\n".join(lines) + "\n")
        return [r.get("target", "") for r in out["results"]]

    def write_history(self) -> None:
        """Sample sessions as a town leaves them (transcripts, events), working real beads.

        The beads are made with real bd first (one `bd batch` transaction); the generator's
        bead ids are then replaced by bd's, so transcripts, events and beads agree.
        """
        from gt_ext.corpus.sample_town import generate, write_history

        sessions = generate(seed=0)
        first: dict[str, Any] = {}
        for sess in sessions:
            if sess.bead and sess.bead not in first:
                first[sess.bead] = sess
        sample_ids = list(first)
        real_ids = self.bd_batch([f"create task 2 {_bd_quote(f'{first[b].task} work for {first[b].role} ({b})')}"
                                  for b in sample_ids])
        mapping = dict(zip(sample_ids, real_ids, strict=True))
        for sess in sessions:
            if sess.bead:
                old, new = sess.bead, mapping[sess.bead]
                sess.bead = new
                sess.messages = [{**m, "content": m["content"].replace(old, new)} for m in sess.messages]
        issues = write_history(sessions, Path(self.town["root"]), self.out / "claude-projects")
        self.bd_batch([f"update {i['id']} status=in_progress assignee={i['assignee']}" for i in issues])
        by_label: dict[str, list[str]] = {}
        for i in issues:
            for label in i.get("labels") or []:
                by_label.setdefault(label, []).append(i["id"])
        for label, ids in sorted(by_label.items()):
            console.print(f"[dim]$ bd label add {' '.join(ids)} {label}[/dim]")
            self.bd().run("label", "add", *ids, label)
        atomic_write_json(self.out / "beads-to-close.json", issues)
        self.state["figures"]["sessions"] = len(sessions)
        self.state["figures"]["beads"] = len(issues)

    def install_hooks(self) -> None:
        self.run("gt-ext", "hooks", "install", "--town", self.town["root"], "--gt-home",
                 str(Path(self.town["env"]["HOME"]) / ".gt"))

    def close_beads(self) -> None:
        """Close every bead with real bd: its on_close hook spools the bead and starts processing."""
        issues = json.loads((self.out / "beads-to-close.json").read_text())
        ok = [i["id"] for i in issues if not i["close_reason"].startswith("failed")]
        failed = [i["id"] for i in issues if i["close_reason"].startswith("failed")]
        bd = self.bd()
        for ids, reason in ((ok, "done"), (failed, "failed: abandoned")):
            # In batches: each close is a Dolt commit, and a few hundred in one bd call can outlast
            # bd's command timeout on a busy machine. A resumed demo skips the ones already closed.
            still_open = {i.id for i in bd.list(all=True) if i.status != "closed"} if ids else set()
            ids = [i for i in ids if i in still_open]
            for start in range(0, len(ids), 50):
                batch = ids[start:start + 50]
                console.print(f"[dim]$ bd close {' '.join(batch)} --reason {reason!r}[/dim]")
                bd.run("close", *batch, "--reason", reason)

    def collect(self) -> None:
        """Wait for the hook-started processing, then finish whatever is left and show stats."""
        self.run("gt-ext", "corpus", "process")
        stats = json.loads(self.run("gt-ext", "corpus", "stats", "--json", capture=True))
        self.state["figures"]["corpus"] = stats
        console.print_json(data=stats)

    def train_job(self) -> None:
        """The user's command, through the gt shim, exactly as typed in a town."""
        # The job's rig: its corpus is that rig's own examples (and those of rigs that share theirs).
        self.shim("formula", "run", "train-role-model", "--set", f"role={ROLE}", "--set", "rig=webapp",
                 "--set", f"max_seconds={self.train_seconds}", "--set", f"max_steps={TRAIN_STEPS}",
                 "--set", "lora_rank=16", "--set", f"train_args={TRAIN_ARGS}",
                 "--job-dir", str(self.out / "job"))

    def eval_base(self) -> None:
        out = self.run("gt-ext", "eval", "run", "--model", f"base:{BASE}", "--suite", f"role:{ROLE}",
                       "--no-write", "--json", capture=True)
        r = json.loads(out)
        self.state["figures"]["metric:base eval"] = f"composite {r.get('composite')} gate {r.get('gate', {}).get('deployable')}"

    def deploy(self) -> None:
        # A few CPU minutes of training do not pass the witness gate (see the eval stage); deploy
        # refuses such a version unless forced, and the reason is logged in the history.
        shown = json.loads(self.shim("model", "show", ROLE, "--json", capture=True))
        passed = isinstance(shown, dict) and shown.get("gate") == "pass"
        reason = "make demo" if passed else "make demo: short CPU training run, below the eval gate"
        self.shim("model", "deploy", ROLE, *([] if passed else ["--force"]), "--reason", reason)
        self.shim("model", "list")

    def ask(self) -> None:
        """Ask one witness question through the deployed agent command, as gt would launch it."""
        from gt_ext.gastown import settings
        from gt_ext.gastown.town import Town

        cfg = settings.town_settings(Town(Path(self.town["root"]))).data
        agent_name = cfg["role_agents"][ROLE]
        agent = cfg["agents"][agent_name]
        argv = [agent["command"], *agent.get("args", [])]
        env_extra = {"GT_ROLE": ROLE, "GT_RIG": "webapp", "BD_ACTOR": "webapp/witness"}
        console.print(f"[dim]role_agents[{ROLE}] = {agent_name}: {' '.join(argv)}[/dim]")
        res = subprocess.run(argv, input=QUESTION + "\n", text=True, capture_output=True,
                             env={**self.env(), **env_extra}, cwd=self.town["root"], timeout=600)
        self.state["figures"]["answer"] = res.stdout.strip()[-1500:]
        console.print(f"[bold]Q:[/bold] {QUESTION}\n[bold]A:[/bold] {res.stdout.strip()}")
        if res.returncode != 0:
            raise SystemExit(f"demo: the deployed agent exited {res.returncode}: {res.stderr[-800:]}")

    # -- the loop ------------------------------------------------------------------------------------
    def own_session(self) -> None:
        """The deployed witness's own session, back in the corpus: its stop event was spooled when
        it exited, and the hooks started the processor; finish what is left and show it."""
        self.run("gt-ext", "corpus", "process")
        rows = json.loads(self.run("gt", "corpus", "list", "--source", "node0", "--status", "all", "--json",
                                   capture=True))
        if not rows:
            raise SystemExit("demo: the deployed witness's session did not reach the corpus")
        t = Table(title="node0 sessions in the corpus (gt corpus list --source node0)")
        for col in ("id", "role", "rig", "model", "session", "task", "status"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["id"][:12], r["role"] or "-", r["rig"] or "-", r["model"] or "-", (r["session"] or "-")[:13],
                      r["task"] or "-", r["status"])
        console.print(t)
        r = rows[0]
        self.state["figures"]["own session"] = (f"{len(rows)} example(s), role {r['role']}, model {r['model']}, "
                                                f"session {r['session']}, {r['status']}")
        if r["role"] != ROLE or not r["model"]:
            raise SystemExit(f"demo: the node0 session is not tagged as the {ROLE} model's: {r}")

    def _stale(self, expect: set[str], key: str) -> dict[str, Any]:
        self.run("gt", "model", "stale", ROLE)
        [r] = json.loads(self.run("gt", "model", "stale", ROLE, "--json", "--no-retrain", capture=True))
        changed = ", ".join(c["key"] for c in r["changed"]) or "nothing"
        self.state["figures"][key] = f"{r['verdict']} (score {r['score']}; changed: {changed})"
        if r["verdict"] not in expect:
            raise SystemExit(f"demo: expected the {ROLE} model {' or '.join(sorted(expect))}, got {r['verdict']}: "
                             f"{r['reasons']}")
        return r

    def stale_fresh(self) -> None:
        """Right after training and deploying: the model knows the town's conventions."""
        self._stale({"fresh"}, "stale check after deploy")

    def edit_conventions(self) -> None:
        """A town convention changes after training: a new rule in the town's CLAUDE.md."""
        path = Path(self.town["root"]) / "CLAUDE.md"
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n## Patrol\n\nNudge an idle polecat once before you escalate it to the mayor.\n")
        console.print(f"appended a patrol rule to {path}")

    def stale_after_edit(self) -> None:
        """Now the deployed model is stale: the check says what changed and opens one retrain job bead."""
        r = self._stale({"stale"}, "stale check after CLAUDE.md edit")
        bead = r["retrain"].get("open_bead") or r["retrain"].get("bead")
        if bead:
            self.state["figures"]["retrain job bead"] = f"{bead} (gt formula run improve-role --set role={ROLE})"

    # -- summary --------------------------------------------------------------------------------
    def summary(self) -> None:
        t = Table(title="gastown-finetune demo", show_lines=False)
        t.add_column("stage")
        t.add_column("result")
        f = self.state["figures"]
        t.add_row("town", str(f.get("town", "")))
        t.add_row("sample history", f"{f.get('sessions', '?')} sessions, {f.get('beads', '?')} beads closed")
        corpus = f.get("corpus") or {}
        t.add_row("corpus", ", ".join(f"{k}={v}" for k, v in (corpus.get("by_status") or corpus).items()
                                      if not isinstance(v, dict))[:120])
        for k, v in f.items():
            if k.startswith("metric:"):
                t.add_row(k.removeprefix("metric:"), str(v))
        t.add_row("answer", (f.get("answer") or "")[:200])
        for k in ("own session", "stale check after deploy", "stale check after CLAUDE.md edit", "retrain job bead"):
            if k in f:
                t.add_row(k, str(f[k]))
        total = sum(self.state["timings"].values())
        t.add_row("time", ", ".join(f"{k} {v:.0f}s" for k, v in self.state["timings"].items()) + f"; total {total:.0f}s")
        console.print(t)

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        # gt looks bd and dolt up on PATH (and tries to `go install` them when missing).
        os.environ["PATH"] = f"{self.venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        try:
            self.stage("town", "Build a sample town (real gt, bd, dolt)", self.build_town)
            self.reopen_town()
            self.stage("history", "Write sample sessions and their beads", self.write_history)
            self.stage("hooks", "Install the corpus hooks", self.install_hooks)
            self.stage("close", "Close beads (hooks spool and collect)", self.close_beads)
            self.stage("collect", "Collect, scrub and tag the sessions", self.collect)
            self.stage("train", "gt formula run train-role-model --set role=witness", self.train_job)
            self.stage("eval-base", "Score the base model on the suite that gates the witness", self.eval_base)
            self.stage("deploy", "gt model deploy witness", self.deploy)
            self.stage("ask", "Ask the deployed witness a question", self.ask)
            self.stage("own-session", "The loop: the witness's own session back in the corpus", self.own_session)
            self.stage("stale-fresh", "gt model stale witness (just trained: fresh)", self.stale_fresh)
            self.stage("edit", "Change a town convention: CLAUDE.md", self.edit_conventions)
            self.stage("stale-after", "gt model stale witness (after the edit: stale)", self.stale_after_edit)
            self.collect_figures()
            self.summary()
        finally:
            self.close_town()
        return 0

    def collect_figures(self) -> None:
        """Figures for the summary, read from what the stages wrote."""
        f = self.state["figures"]
        from gt_ext.train.runfolder import read_run_json

        job = self.out / "job"
        run = read_run_json(job / "run")
        if run is not None:
            m = run.get("metrics", {})
            if m.get("val_loss_start") is not None and m.get("val_loss_end") is not None:
                s, e = m["val_loss_start"], m["val_loss_end"]
                f["metric:val loss"] = f"{s:.3f} -> {e:.3f} ({100 * (s - e) / s:.0f}% lower)"
        for p in sorted((job / "export").glob("eval-*.json")):
            r = json.loads(p.read_text())
            f["metric:trained eval"] = f"composite {r.get('composite')} gate {r.get('gate', {}).get('deployable')}"
        self.save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gt-ext-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="demo folder (state, town, job)")
    p.add_argument("--train-seconds", type=int, default=3600,
                   help="training wall-clock budget; the demo is sized by its step count (TRAIN_STEPS), this only caps a stalled run")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    a = p.parse_args(argv)
    if a.fresh and a.out.exists():
        shutil.rmtree(a.out)
    return Demo(a.out, a.train_seconds).main()


if __name__ == "__main__":
    sys.exit(main())
