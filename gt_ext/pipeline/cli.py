"""`gt-ext pipeline`: node0 stage servers that each hold a span of a model's layers, and the tools
around them (status, subspace for activation compression).

    gt-ext swarm keygen --out swarm.key
    gt-ext pipeline stage --run witness --layers 0/3 --swarm-key swarm.key            # terminal 1
    gt-ext pipeline stage --run witness --layers 1/3 --swarm-key swarm.key --initial-peers ADDR
    gt-ext pipeline stage --run witness --layers 2/3 --swarm-key swarm.key --initial-peers ADDR
    gt-ext train --backend pipeline --run witness --role witness --corpus C --swarm-key swarm.key \\
        --initial-peers ADDR --out runs/w1

Every stage and the trainer take the same training config (`--config`, `KEY=VALUE`): a stage holds
the LoRA and optimizer of its layers. node0 comes from the checkout in $NODE0_PATH (or --node0).
No torch import at module level.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(
    help="Pipeline-parallel LoRA over node0 stage servers (127.0.0.1 unless --listen).",
    no_args_is_help=True,
    add_completion=False,
)


def _key(swarm_key: Path | None, insecure_open_swarm: bool) -> object:
    from gt_ext.swarm.auth import SwarmKey

    key = SwarmKey.from_env_or_path(swarm_key)
    if key is None and not insecure_open_swarm:
        raise GtExtError("no swarm key: pass --swarm-key FILE (make one with `gt-ext swarm keygen`) "
                         "or --insecure-open-swarm")
    return key


@app.command(context_settings={"allow_interspersed_args": True})
def stage(
    overrides: Annotated[list[str] | None, typer.Argument(metavar="[KEY=VALUE]...", help="training config overrides (same as gt-ext train)")] = None,
    run: Annotated[str, typer.Option("--run", help="pipeline run name shared by its stages and trainer")] = "pipeline",
    layers: Annotated[str, typer.Option("--layers", help="K/N (stage K of N even spans) or A:B (layers A..B-1)")] = "0/1",
    swarm_key: Annotated[Path | None, typer.Option("--swarm-key", help="swarm key file (or $GT_SWARM_KEY_FILE)")] = None,
    initial_peers: Annotated[list[str] | None, typer.Option("--initial-peers", help="multiaddr of a running stage (repeatable)")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help="HOST:PORT (default 127.0.0.1, free port)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="training config YAML/TOML (same as the trainer's)")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="save this stage's adapter+optimizer after every step; resume from it")] = None,
    compression_rate: Annotated[int | None, typer.Option(help="node0 activation compression: hidden/RATE dims between stages")] = None,
    subspace: Annotated[Path | None, typer.Option(help="subspace file for compression (gt-ext pipeline subspace)")] = None,
    power_sgd_rank: Annotated[int | None, typer.Option(help="average replicas' LoRA gradients with PowerSGD of this rank")] = None,
    matchmaking_time: Annotated[float, typer.Option(help="seconds replicas of a stage gather before averaging")] = 2.0,
    ready_file: Annotated[Path | None, typer.Option("--ready-file", help="write the stage's addresses here (JSON) once it serves")] = None,
    max_sessions: Annotated[int, typer.Option(help="generation: sessions holding a KV cache here at once")] = 16,
    max_cached_tokens: Annotated[int, typer.Option(help="generation: cached tokens over all sessions here")] = 32768,
    session_idle_s: Annotated[float, typer.Option(help="generation: drop a session unused this many seconds")] = 120.0,
    max_adapters: Annotated[int, typer.Option(help="generation: serving adapters held at once (LRU)")] = 8,
    node0: Annotated[Path | None, typer.Option("--node0", help="node0 checkout (default $NODE0_PATH)")] = None,
    insecure_open_swarm: Annotated[bool, typer.Option(help="run without a swarm key (anyone who can connect may use the stage)")] = False,
) -> None:
    """Serve one span of the base model's layers as a node0 stage (LoRA on those layers only)."""
    from gt_ext.models import load_tokenizer, resolve_model_dir
    from gt_ext.pipeline.records import check_run
    from gt_ext.pipeline.stage import parse_span, read_config
    from gt_ext.swarm.dht import check_initial_peers, listen_maddr
    from gt_ext.train.config import load_config

    if node0 is not None:
        os.environ["NODE0_PATH"] = str(node0)
    check_run(run)
    listen_maddr(listen)
    check_initial_peers(initial_peers or [])
    key = _key(swarm_key, insecure_open_swarm)
    cfg = load_config(config, overrides or [])
    model_dir = resolve_model_dir(cfg.base_model)
    span = parse_span(layers, read_config(model_dir).num_hidden_layers)
    from node0_patches import load_node0
    from node0_patches.inference import InferenceLimits
    from node0_patches.server import StageSettings, serve_stage

    load_node0()
    limits = InferenceLimits(max_sessions=max_sessions, max_tokens=max_cached_tokens, idle_s=session_idle_s,
                             max_adapters=max_adapters)
    settings = StageSettings(
        run=run, model_dir=model_dir, span=span, cfg=cfg, key=key, initial_peers=initial_peers or [],
        listen=listen, checkpoint_dir=checkpoint_dir, compression_rate=compression_rate, subspace=subspace,
        vocab_size=len(load_tokenizer(str(model_dir))), power_sgd_rank=power_sgd_rank,
        matchmaking_time=matchmaking_time, ready_file=ready_file, inference=limits,
    )
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every thread's stack
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"stage {span.label()} of run {run}: loading {model_dir}", file=sys.stderr)
    def announce(info: dict) -> None:
        print(f"stage {span.label()} of run {run} serves (peer {info['peer']}); other stages and the "
              f"trainer join with:\n  --initial-peers {info['addrs'][0]}", file=sys.stderr, flush=True)

    code, error = 1, None
    try:
        serve_stage(settings, stop, on_ready=announce)
        code = 0
    except GtExtError as e:
        error, code = str(e), e.exit_code
    finally:
        # Printed last: hivemind objects freed with the exception's frames complain on the way out.
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
        _exit_reaping_children(code)


def _exit_reaping_children(code: int) -> None:
    """End the stage process now. hivemind's server thread, task pools, averagers and the p2p
    daemon do not all stop on shutdown; whatever is left of this process's descendants is killed,
    then the process exits without waiting for its non-daemon threads."""
    import traceback

    import psutil

    if sys.exc_info()[0] not in (None, GtExtError, SystemExit):
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(code)


@app.command()
def subspace(
    base: Annotated[str, typer.Option("--base", help="base model: a known name or an HF LLaMA folder")],
    out: Annotated[Path, typer.Option("--out", help="folder to write (HF model + subspace.pt)")],
    rate: Annotated[int, typer.Option("--rate", help="compression rate: hidden/RATE coordinates travel between stages")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="seed of the subspace basis and fixed token embeddings")] = 0,
) -> None:
    """Make a base model whose activations node0 compresses without loss (docs/pipeline.md); a
    different, weaker model than --base: for benchmarks and tests."""
    from gt_ext.models import resolve_model_dir
    from gt_ext.pipeline.subspace import SUBSPACE_FILE, make_subspace_model

    if out.exists():
        raise GtExtError(f"--out {out} already exists")
    make_subspace_model(resolve_model_dir(base), out, rate, seed)
    print(f"wrote {out} (stages: base_model={out} --compression-rate {rate} --subspace {out / SUBSPACE_FILE})")


@app.command()
def status(
    run: Annotated[str, typer.Option("--run", help="pipeline run name")],
    initial_peers: Annotated[list[str], typer.Option("--initial-peers", help="multiaddr of a running stage")],
    swarm_key: Annotated[Path | None, typer.Option("--swarm-key", help="swarm key file (or $GT_SWARM_KEY_FILE)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Which stages serve which layers of a run, and whether they form a complete pipeline."""
    from gt_ext.pipeline.records import plan_route, read_stage_records
    from gt_ext.swarm.auth import SwarmKey
    from gt_ext.swarm.dht import start_dht

    dht = start_dht(initial_peers, None, SwarmKey.from_env_or_path(swarm_key), client_mode=True, username="status")
    try:
        records = read_stage_records(dht, run)
    finally:
        dht.shutdown()
    problem = None
    try:
        plan_route(records, run)
    except GtExtError as e:
        problem = str(e)
    rows = sorted(records, key=lambda r: (r.first, r.peer))
    if as_json:
        print(json.dumps({"run": run, "complete": problem is None, "problem": problem,
                          "stages": [r.extra for r in rows]}, indent=2, default=str))
        return
    for r in rows:
        gen = (f"  sessions {r.extra.get('sessions', 0)} ({r.extra.get('cached_tokens', 0)} tokens cached, "
               f"{r.extra.get('serving_adapters', 0)} serving adapters)") if "sessions" in r.extra else ""
        print(f"{r.span_label:>14}  step {r.epoch:<5} peer {r.peer[-10:]}  base {r.base_hash}  "
              f"settings {r.settings_hash}{gen}")
    print("pipeline complete" if problem is None else f"incomplete: {problem}")
