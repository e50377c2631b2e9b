"""`gt-ext serve`: the prompt API server, plus one-shot chat and role-card measurement.

    gt-ext serve --model witness:3                 # OpenAI-compatible API on 127.0.0.1:8000
    gt-ext serve --model base:smollm2-135m-instruct --host 0.0.0.0 --token-file ~/.gt-api-token
    gt-ext serve chat --model base:smollm2-135m-instruct "What is 2+2?"
    gt-ext serve --model witness:3 --backend pipeline --run serve --initial-peers ADDR --swarm-key swarm.key
    gt-ext serve card --role witness --json

No torch import at module level: the heavy modules load inside the commands.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(
    help="Serve role models: OpenAI-compatible API (default), one-shot chat, role card sizes.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)

MODEL_HELP = "Model: registry NAME[:VER], base:<name>, a run/export folder, or a .gguf file."
ADAPTERS_HELP = "Extra LoRA adapters, comma-separated REF[=WEIGHT] (registry refs or adapter folders)."
BACKEND_HELP = ("auto (chosen by measurement), torch, llama.cpp, or pipeline (through node0 stage servers: "
                "--run, --initial-peers, --swarm-key).")
RUN_HELP = "--backend pipeline: the pipeline run whose stages serve the base model."
PEERS_HELP = "--backend pipeline: a stage's multiaddr (repeatable), as `gt-ext pipeline stage` prints it."
KEY_HELP = "--backend pipeline: the stages' swarm key file (or $GT_SWARM_KEY_FILE)."



def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: Path | None) -> str | None:
    """The API bearer token from --token-file or $GT_EXT_API_TOKEN (never from argv: ps shows argv)."""
    if token_file is not None:
        try:
            tok = token_file.expanduser().read_text().strip()
        except OSError as e:
            raise GtExtError(f"--token-file {token_file}: {e.strerror}") from None
        if not tok:
            raise GtExtError(f"--token-file {token_file}: empty")
    else:
        tok = os.environ.get("GT_EXT_API_TOKEN") or None
    from gt_ext.serve.api import check_token

    check_token(tok)
    return tok


@app.callback()
def serve(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", metavar="NAME[:VER]", help=MODEL_HELP),
    adapters: str = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; non-loopback needs a token."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token_file: Path = typer.Option(None, "--token-file", help="File holding the bearer token "
                                    "(or set GT_EXT_API_TOKEN)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    quantize: str = typer.Option("int8", "--quantize", help="PyTorch backend: int8 linears (measured fastest) "
                                 "or none (exact fp32)."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for prefill and decode; 0 = every core (a "
                                "batched server with a host to itself), 1 on a host shared with busy agents."),
    max_batch: int = typer.Option(8, "--max-batch", help="Requests decoded together."),
    max_queue: int = typer.Option(64, "--max-queue", help="Waiting requests before 503."),
    max_per_client: int = typer.Option(8, "--max-per-client", help="Requests in flight per client address "
                                       "before 429."),
    max_body_kb: int = typer.Option(1024, "--max-body-kb", help="Largest request body (KiB) before 413."),
    rate_per_client: float = typer.Option(10.0, "--rate-per-client", help="Requests a second per client "
                                          "address, sustained, before 429 with Retry-After (0 = no limit)."),
    burst_per_client: int = typer.Option(40, "--burst-per-client", help="Requests a client address may send "
                                         "at once above --rate-per-client."),
    abandon_cost: float = typer.Option(10.0, "--abandon-cost", help="Extra requests' worth charged to a client "
                                       "address that hangs up before its answer is whole."),
    run: str = typer.Option(None, "--run", help=RUN_HELP),
    initial_peers: list[str] = typer.Option(None, "--initial-peers", help=PEERS_HELP),
    swarm_key: Path = typer.Option(None, "--swarm-key", help=KEY_HELP),
) -> None:
    """Run the OpenAI-compatible API (/v1/chat/completions, /v1/models) for --model."""
    if ctx.invoked_subcommand is not None:
        return
    if not model:
        raise GtExtError("serve: --model is required (NAME[:VER], base:<name>, or a run/export folder)")
    token = read_token(token_file)
    if not is_loopback(host) and not token:
        raise GtExtError(f"serve --host {host}: binding beyond loopback needs a bearer token "
                         "(--token-file FILE or GT_EXT_API_TOKEN)")
    if not 0 < port < 65536:
        raise GtExtError(f"serve --port {port}: not a TCP port")
    if min(max_batch, max_queue, max_per_client, max_body_kb) < 1:
        raise GtExtError("serve: --max-batch, --max-queue, --max-per-client and --max-body-kb must be >= 1")
    if rate_per_client < 0 or burst_per_client < 1 or abandon_cost < 0:
        raise GtExtError(f"serve: --rate-per-client {rate_per_client:g} and --abandon-cost {abandon_cost:g} must be "
                         f">= 0, --burst-per-client {burst_per_client} >= 1")
    from gt_ext.serve.pipeline import PipelineTarget

    target = PipelineTarget.for_backend(backend, run, initial_peers, swarm_key)
    import uvicorn

    from gt_ext.serve.api import ApiLimits, create_app
    from gt_ext.serve.loader import load_generator

    gen, resolved = load_generator(model, adapters, backend, None if quantize == "none" else quantize, threads,
                                   purpose="api", pipeline=target)
    api = create_app(gen, resolved, token=token, max_batch=max_batch, max_queue=max_queue,
                     limits=ApiLimits(max_body_bytes=max_body_kb * 1024, max_per_client=max_per_client,
                                      rate_per_client=rate_per_client, burst_per_client=burst_per_client,
                                      abandon_cost=abandon_cost))
    print(f"serving {resolved.ref} ({gen.backend}) on http://{host}:{port}/v1"
          f"{' (bearer token required)' if token else ''}", file=sys.stderr)
    # Keep-alive and header limits of uvicorn bound what an idle or slow connection holds.
    try:
        uvicorn.run(api, host=host, port=port, log_level="warning", timeout_keep_alive=5,
                    limit_concurrency=max(64, max_queue * 2))
    finally:
        gen.close()


@app.command("chat")
def chat_cmd(
    prompt: str = typer.Argument(..., help="The user message."),
    model: str = typer.Option(..., "--model", "-m", metavar="NAME[:VER]", help=MODEL_HELP),
    adapters: str = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    system: str = typer.Option(None, "--system", help="A system message."),
    max_tokens: int = typer.Option(256, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int = typer.Option(None, "--seed"),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    run: str = typer.Option(None, "--run", help=RUN_HELP),
    initial_peers: list[str] = typer.Option(None, "--initial-peers", help=PEERS_HELP),
    swarm_key: Path = typer.Option(None, "--swarm-key", help=KEY_HELP),
) -> None:
    """Answer one prompt, streaming the reply to stdout."""
    from gt_ext.serve.loader import load_generator
    from gt_ext.serve.params import SamplingParams
    from gt_ext.serve.pipeline import PipelineTarget

    target = PipelineTarget.for_backend(backend, run, initial_peers, swarm_key)
    gen, _ = load_generator(model, adapters, backend, pipeline=target)
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    try:
        for piece in gen.stream(msgs, SamplingParams(max_new_tokens=max_tokens, temperature=temperature, seed=seed)):
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        gen.close()
    sys.stdout.write("\n")


@app.command("card")
def card_cmd(
    role: str = typer.Option(..., "--role", help="Gas Town role."),
    rig: str = typer.Option("", "--rig"),
    workdir: Path = typer.Option(None, "--workdir", help="Where `gt prime` runs (a role's work dir)."),
    model: str = typer.Option("base:smollm2-135m-instruct", "--model", help="Whose tokenizer counts."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Token counts of the node0 role card and of real `gt prime` for a role."""
    from gt_ext.models import load_tokenizer
    from gt_ext.models.refs import resolve
    from gt_ext.roles import check_role
    from gt_ext.serve.rolecard import AgentEnv, measure, role_card

    check_role(role)
    env = AgentEnv(role=role, rig=rig, root=os.environ.get("GT_ROOT", ""),
                   workdir=str(workdir or Path.cwd()))
    tok = load_tokenizer(resolve(model).base_model)
    m = measure(env, tok)
    if json_out:
        print(json.dumps(m))
        return
    print(role_card(env))
    print(f"\nrole card: {m['role_card_tokens']} tokens; gt prime: {m['gt_prime_tokens'] or 'n/a'} tokens")


@app.command("backends")
def backends_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Which generation backends are installed here."""
    from gt_ext.serve.loader import llama_cpp_available

    rows = [{"backend": "torch", "available": True},
            {"backend": "llama.cpp", "available": llama_cpp_available()}]
    if json_out:
        print(json.dumps(rows))
        return
    for r in rows:
        print(f"{r['backend']:10} {'yes' if r['available'] else 'no (llama-cpp-python not installed)'}")
