"""`node0-inference`: the agent command gt launches in a role's tmux pane.

    node0-inference --model NAME[:VER] [--adapters a,b=0.5] [--rag] [--backend auto|torch|llama.cpp]
    node0-inference --model NAME[:VER] --backend pipeline --run RUN --initial-peers ADDR --swarm-key FILE

It loads the model, prints the ready prompt `node0> `, then for every prompt or nudge typed into
the pane runs one agent turn: the reply streams into the pane; each tool call in it
(`<tool_call>{"name": "Bash", ...}</tool_call>`, the corpus format) runs in the work dir in a
bubblewrap sandbox after a policy check (`gt_ext.serve.tools`; settings in the town's
`settings/gt-ext.json`, see `gt_ext.serve.agentcfg`), and its output goes back to the model until
the model answers without a tool call or a limit (steps, time, output size) is hit. Without a
working sandbox the agent still answers, but runs no command and says why.

Every session goes back into the corpus: it is written as a tagged transcript in Claude Code's
format (`gt_ext.serve.transcript`: role, rig, actor, bead, model `name:version`, session id, gt's
own when gt gave one), registered with gt at start (`gt prime --hook`, which logs the
`session_start` bead closes link by), and ends with a `session_stop` event in the corpus spool.
EOF (Ctrl-D), SIGTERM (gt's kill) and SIGHUP (pane closed) end it cleanly that way; Ctrl-C cancels
the current turn; only a SIGKILL skips the stop event (then a bead close or `gt corpus process
--scan` still finds the transcript).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

PROCESS_NAME = "node0-inference"
READY_PROMPT = "node0> "  # gt's RuntimeConfig tmux.ready_prompt_prefix (set by the registry's deploy)


@dataclass
class Limits:
    """Bounds on one agent turn."""

    max_steps: int = 8  # model replies (each may run one tool call) per turn
    turn_s: float = 600.0  # wall time for a whole turn
    tool_s: float = 120.0  # wall time for one tool call
    max_output: int = 4000  # characters of tool output given back to the model


class _Terminate(Exception):
    """Raised from the SIGTERM/SIGHUP handler to unwind and close the session cleanly."""


def set_process_name(name: str = PROCESS_NAME) -> None:
    """Make `ps`/tmux show `name` (gt's liveness check looks for it among the pane's processes)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_NAME) unavailable")


class Agent:
    """The agent loop over a Generator, a ToolRunner and a Transcript."""

    def __init__(self, generator: Any, env: Any, runner: Any, params: Any, limits: Limits,
                 transcript_factory: Any = None, rag: bool = False, out: TextIO = sys.stdout,
                 settings: Any = None, rag_budget: int | None = None):
        from gt_ext.serve.agentcfg import AgentSettings
        from gt_ext.serve.rolecard import role_card

        self.gen = generator
        self.env = env
        self.runner = runner
        self.params = params
        self.limits = limits
        self.rag = rag
        self.rag_budget = rag_budget
        self.out = out
        self.settings = settings or AgentSettings()
        self._transcript_factory = transcript_factory
        self.transcript = None
        self.history: list[dict[str, str]] = [{"role": "system", "content": role_card(env)}]

    def _say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _fit_history(self) -> None:
        """Drop the oldest turns (never the role card) until the prompt fits the model's context."""
        ctx = getattr(self.gen, "max_context", 8192)
        while len(self.history) > 2 and self.gen.count_tokens(self.history) + self.params.max_new_tokens > ctx:
            del self.history[1]

    def _context(self, prompt: str) -> str:
        if not self.rag:
            return ""
        try:
            from gt_ext.rag.retrieve import context_for, decision_budget

            # The prompt, its context and the answer stay within the decision limit (3K tokens);
            # within that, the budget deploy gave (`--rag-budget`), else the role's.
            budget = decision_budget(self.env.role, self.gen.count_tokens(prompt), self.params.max_new_tokens,
                                     cap=self.rag_budget)
            return context_for(prompt, self.env.role, rig=self.env.rig or None, town=self.env.root or None,
                               budget_tokens=budget)
        except Exception as e:  # RAG is an aid: a missing index must not break the agent
            log.warning("rag context unavailable: %s", e.__class__.__name__)
            return ""

    def turn(self, prompt: str) -> str:
        """Run one turn for `prompt`; return the last reply's prose."""
        from gt_ext.corpus.format import parse_tool_calls, render_tool_call, strip_tool_calls
        from gt_ext.serve.agentcfg import bang_refusal, parse_bang
        from gt_ext.serve.generate import GenerationStats

        bang = parse_bang(prompt)
        refusal = bang_refusal(bang[0], self.settings) if bang else None
        if refusal:  # not run, not given to the model: say why in the pane and wait for the next prompt
            log.info("!command refused: %s", refusal)
            self._say(f"[refused: {refusal}]\n")
            return ""
        if self.transcript is None and self._transcript_factory is not None:
            self.transcript = self._transcript_factory()
        if self.transcript:
            from gt_ext.gastown.session import bead_from_beacon

            self.transcript.set_bead(bead_from_beacon(prompt))  # gt's startup beacon names the work
            self.transcript.user(prompt)
        self._say("⏺ ")  # at once: gt checks that the pane changed right after its Enter
        ctx = self._context(prompt)
        self.history.append({"role": "user", "content": f"{ctx}\n\n{prompt}" if ctx else prompt})
        deadline = time.monotonic() + self.limits.turn_s
        # Stop right after the first complete tool call: run it before the model goes on.
        params = replace(self.params, stop=[*self.params.stop, "</tool_call>"])
        # "!command" (as in Claude Code's bash mode) runs the command as the assistant's first tool
        # call, written into the turn as if generated (so in the same sandbox); the model then
        # answers from its output.
        forced = render_tool_call("Bash", {"command": bang[1]}) if bang else None
        reply = ""
        for _step in range(self.limits.max_steps):
            stats = GenerationStats()
            if forced:
                reply, forced = forced, None
                self._say(reply)
            else:
                if _step:
                    self._say("⏺ ")
                self._fit_history()
                reply = ""
                for piece in self.gen.stream(self.history, params, stats=stats):
                    reply += piece
                    self._say(piece)
                if reply.count("<tool_call>") > reply.count("</tool_call>") and stats.finish_reason == "stop":
                    reply += "</tool_call>"  # the stop string was cut; the call is complete
                    self._say("</tool_call>")
            self._say("\n")
            calls = parse_tool_calls(reply)[:1]
            usage = {"input_tokens": stats.prompt_tokens, "output_tokens": stats.completion_tokens}
            tool_uses = [(f"toolu_{uuid.uuid4().hex[:24]}", c["name"], c["input"]) for c in calls]
            # Keep the history in the corpus format, whatever the model's spacing was.
            text = strip_tool_calls(reply)
            canon = "\n".join([text] * bool(text) + [render_tool_call(c["name"], c["input"]) for c in calls])
            self.history.append({"role": "assistant", "content": canon or reply})
            if self.transcript:
                self.transcript.assistant(text, tool_uses, usage)
            if not calls:
                return text
            left = deadline - time.monotonic()
            result = self.runner.run(calls[0], timeout_s=max(left, 1.0))
            self._say(_indent(result.output) + "\n")
            self.history.append({"role": "tool", "content": result.output})
            if self.transcript:
                self.transcript.tool_result(tool_uses[0][0], result.output, result.is_error)
            if time.monotonic() >= deadline:
                self._say(f"[turn stopped: time limit of {self.limits.turn_s:.0f} s]\n")
                return strip_tool_calls(reply)
        self._say(f"[turn stopped: step limit of {self.limits.max_steps}]\n")
        return strip_tool_calls(reply)

    def close(self, reason: str = "exit") -> None:
        """End the session: close the transcript and spool its stop event for the corpus."""
        if self.transcript:
            self.transcript.close()
            if self.transcript.written:
                spool_session_end(self.transcript, self.env, reason)



def spool_session_end(transcript: Any, env: Any, reason: str) -> Path | None:
    """Spool a `session_stop` event for a finished node0 session, as Claude's Stop hook does for
    Claude's, and start the corpus processor when the town's hooks were installed with
    auto-processing. The spool is `$GT_EXT_SPOOL`, else the town's corpus store's; outside a town
    there is none (as for the hooks), and `gt corpus process --scan` takes the transcript later.
    Never raises: a session must end even when its town is gone; the reason is logged."""
    import json

    from gt_ext.corpus import spool
    from gt_ext.corpus.store import default_store_dir

    if not (env.root or os.environ.get("GT_EXT_SPOOL")):
        return None
    try:
        store = default_store_dir(env.root or None)
        spool_dir = Path(os.environ.get("GT_EXT_SPOOL") or store / "spool")
        payload = {"session_id": transcript.session_id, "transcript_path": str(transcript.path),
                   "hook_event_name": "SessionEnd", "source": PROCESS_NAME, "reason": reason}
        path = spool.write_event(spool_dir, "session_stop", payload)
    except (OSError, GtExtError) as e:
        log.warning("session %s: stop event not spooled (%s): `gt corpus process --scan` will find "
                    "its transcript", transcript.session_id, e)
        return None
    marker = store / "hooks" / spool.PROCESS_ON_END
    if not os.environ.get("GT_EXT_NO_AUTOPROCESS") and marker.is_file():
        try:
            spool.start_detached(json.loads(marker.read_text()))
        except (OSError, ValueError) as e:
            log.warning("%s: corpus processor not started (%s)", marker, type(e).__name__)
    return path


def _sandbox_line(runner: Any) -> str:
    """One line for the pane: where tool commands may write and connect, or why none will run."""
    why = runner.unavailable()
    if why:
        return f"[sandbox unavailable: {why}; tool commands will be refused]"
    p = runner.sandbox.policy
    net = {"loopback": f"loopback port(s) {', '.join(map(str, p.ports)) or 'none'}", "none": "none",
           "host": "host network"}[p.network]
    return f"sandbox: bubblewrap | writes: work dir{f' + {len(p.write)} path(s)' if p.write else ''} | network: {net}"


def _indent(text: str, lines: int = 20) -> str:
    """Tool output as Claude Code shows it (`  ⎿  first line`, continuation indented)."""
    body = text.rstrip("\n").splitlines() or [""]
    if len(body) > lines:
        body = body[: lines - 1] + [f"... ({len(body) - lines + 1} more lines)"]
    return "\n".join(("  ⎿  " if i == 0 else "     ") + ln for i, ln in enumerate(body))


def build_parser() -> argparse.ArgumentParser:
    """The command line of `node0-inference`."""
    p = argparse.ArgumentParser(
        prog=PROCESS_NAME,
        description="Gas Town agent served by a node0/gastown-finetune model: reads prompts and nudges "
        "from the tty, streams answers, runs the model's tool calls under a guard.",
    )
    p.add_argument("--model", required=True, metavar="NAME[:VER]",
                   help="registry ref, base:<name>, a run/export folder, or a .gguf file")
    p.add_argument("--adapters", default=None, metavar="A,B=W", help="extra LoRA adapters, each REF[=WEIGHT]")
    p.add_argument("--rag", action="store_true", help="prepend town context from the RAG index to each prompt")
    p.add_argument("--rag-budget", type=int, default=None, metavar="TOKENS",
                   help="token budget of that context (default: the role's, see docs/rag.md)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "llama.cpp", "pipeline"],
                   help="pipeline: generate through node0 stage servers (with --run, --initial-peers, --swarm-key)")
    p.add_argument("--run", default=None, help="--backend pipeline: the pipeline run whose stages serve the model")
    p.add_argument("--initial-peers", action="append", default=None, metavar="ADDR",
                   help="--backend pipeline: a stage's multiaddr (repeatable)")
    p.add_argument("--swarm-key", default=None, metavar="FILE",
                   help="--backend pipeline: the stages' swarm key file (or $GT_SWARM_KEY_FILE)")
    p.add_argument("--quantize", default="int8", choices=["int8", "none"],
                   help="PyTorch backend: int8 linears (default; measured fastest) or none (exact fp32)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: agents share their host; 0 = every core)")
    p.add_argument("--workdir", default=None, help="where tool calls run (default: the current dir)")
    p.add_argument("--max-steps", type=int, default=8, help="model replies per turn")
    p.add_argument("--turn-timeout", type=float, default=600.0, help="seconds per turn")
    p.add_argument("--tool-timeout", type=float, default=120.0, help="seconds per tool call")
    p.add_argument("--max-output", type=int, default=4000, help="characters of tool output kept")
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--transcripts", default=None, help="transcript folder (default: Claude's projects dir)")
    p.add_argument("--no-transcript", action="store_true",
                   help="do not write a session transcript (nor spool its stop event for the corpus)")
    p.add_argument("--no-register", action="store_true",
                   help="do not run gt's session-start hook (`gt prime --hook`) for this session")
    p.add_argument("--card", action="store_true",
                   help="print the role card and its token count next to `gt prime`'s, then exit")
    p.add_argument("prompt", nargs="?", default=None, help="a first prompt (gt's prompt_mode=arg)")
    return p


def run(args: argparse.Namespace, stdin_fd: int = 0, out: TextIO = sys.stdout) -> int:
    """Load the model and serve prompts from `stdin_fd` until EOF or SIGTERM."""
    from gt_ext.gastown.session import register_session, session_id_from_env
    from gt_ext.serve.agentcfg import build_policy, load_agent_settings
    from gt_ext.serve.loader import load_generator
    from gt_ext.serve.params import SamplingParams
    from gt_ext.serve.rolecard import AgentEnv, measure, role_card
    from gt_ext.serve.sandbox import Sandbox
    from gt_ext.serve.tools import ToolRunner
    from gt_ext.serve.transcript import Transcript
    from gt_ext.serve.ttyin import PromptReader

    workdir = os.path.abspath(args.workdir or os.getcwd())
    if not os.path.isdir(workdir):
        raise GtExtError(f"--workdir {workdir}: not a folder")
    env = AgentEnv.from_environ(workdir=workdir)
    settings = load_agent_settings(env.root or None)
    runner_sandbox = Sandbox(build_policy(workdir, env, settings))
    limits = Limits(args.max_steps, args.turn_timeout, args.tool_timeout, args.max_output)
    if args.rag_budget is not None and args.rag_budget < 0:
        raise GtExtError(f"--rag-budget {args.rag_budget}: must be 0 or more tokens")
    if min(limits.max_steps, limits.max_output) < 1 or min(limits.turn_s, limits.tool_s) <= 0:
        raise GtExtError("limits: --max-steps, --max-output, --turn-timeout and --tool-timeout must be positive")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed)
    from gt_ext.serve.pipeline import PipelineTarget

    target = PipelineTarget.for_backend(args.backend, args.run, args.initial_peers, args.swarm_key)
    gen, model = load_generator(args.model, args.adapters, args.backend,
                                None if args.quantize in (None, "none") else args.quantize, threads=args.threads,
                                pipeline=target)
    if args.card:
        print(role_card(env), file=out)
        m = measure(env, gen.tokenizer)
        print(f"role card: {m['role_card_tokens']} tokens; gt prime: "
              f"{m['gt_prime_tokens'] if m['gt_prime_tokens'] is not None else 'n/a (no gt/town here)'} tokens",
              file=out)
        gen.close()
        return 0

    # gt's own session id when it gave one; exported so the tools the model runs (gt prime, gt
    # done, bd) see the same id.
    session_id = session_id_from_env(os.environ) or str(uuid.uuid4())
    os.environ["GT_SESSION_ID"] = session_id
    if env.root and not args.no_register and not args.no_transcript:
        # Tell gt about the session (it logs session_start, which bead closes link by), in the
        # background: gt prime takes seconds and the pane must show the ready prompt at once.
        threading.Thread(target=register_session, args=(session_id, env.root, workdir), daemon=True,
                         name="gt-session-start").start()

    def transcript() -> Transcript:
        return Transcript(workdir, model=model.ref, session_id=session_id, folder=args.transcripts,
                          meta=env.to_meta())

    runner = ToolRunner(workdir, limits.tool_s, limits.max_output, sandbox=runner_sandbox)
    agent = Agent(gen, env, runner, params, limits, transcript_factory=None if args.no_transcript else transcript,
                  rag=args.rag, out=out, settings=settings, rag_budget=args.rag_budget)

    def on_term(signum: int, _frame: Any) -> None:
        raise _Terminate(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    out.write(f"node0 {model.ref} on {gen.backend} | role {env.role}"
              f"{' rig ' + env.rig if env.rig else ''} | work dir {workdir}\n")
    out.write(_sandbox_line(runner) + "\n")
    reader = PromptReader(stdin_fd)
    pending = args.prompt
    reason = "exit"
    try:
        while True:
            if pending is None:
                out.write(READY_PROMPT)
                out.flush()
                pending = reader.read()
                if pending is None:  # EOF: the pane's input closed
                    out.write("\n")
                    break
                if not pending.strip():
                    pending = None
                    continue
            else:  # a first prompt from argv: show the ready prompt now (gt waits for it), then answer
                out.write(READY_PROMPT + pending.splitlines()[0][:200] + "\n")
            try:
                agent.turn(pending)
            except KeyboardInterrupt:
                out.write("\n[interrupted]\n")
            except GtExtError as e:  # e.g. prompt longer than the context: say it, stay alive
                out.write(f"\n[error: {e}]\n")
            pending = None
    except _Terminate as t:
        out.write("\n[terminated]\n")
        reason = "hangup" if t.args and t.args[0] == signal.SIGHUP else "terminated"
    finally:
        agent.close(reason)
        gen.close()  # the pipeline backend leaves the swarm
        out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `node0-inference` (declared in pyproject)."""
    set_process_name()
    logging.basicConfig(level=os.environ.get("GT_EXT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    _quiet_tty_echo()
    try:
        return run(args)
    except GtExtError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def _quiet_tty_echo() -> None:
    """Don't echo gt's Escape keystroke as `^[` in the pane (clear ECHOCTL on a tty)."""
    try:
        import termios

        if os.isatty(0):
            attrs = termios.tcgetattr(0)
            attrs[3] &= ~termios.ECHOCTL
            termios.tcsetattr(0, termios.TCSANOW, attrs)
    except (ImportError, OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
