"""`gt-ext swarm`: train one role adapter together with other machines over hivemind.

    gt-ext swarm keygen --out swarm.key
    gt-ext swarm start --role witness --corpus CORPUS --swarm-key swarm.key --out runs/w1 [KEY=VALUE ...]
    gt-ext swarm start --role witness --corpus CORPUS --swarm-key swarm.key --out runs/w2 \\
        --initial-peers /ip4/127.0.0.1/tcp/PORT/p2p/PEER   # printed by the first peer
    gt-ext swarm start ... --out runs/w1 --resume          # newest checkpoint in --out (also `gt-ext train`'s)

Config overrides and `--resume` work as in `gt-ext train` (the same TrainConfig keys).
    gt-ext swarm status --run runs/w1 --swarm-key swarm.key

No torch import at module level: the commands import the training stack when they run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(
    help="Distributed LoRA training on a self-hosted hivemind swarm (127.0.0.1 unless --listen).",
    no_args_is_help=True,
    add_completion=False,
)


def _shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise GtExtError(f"--shard {value!r}: expected K/N, e.g. 0/2") from None
    if n < 1 or not 0 <= k < n:
        raise GtExtError(f"--shard {value!r}: need 0 <= K < N")
    return k, n


@app.command()
def keygen(out: Annotated[Path, typer.Option("--out", help="key file to write (mode 0600)")]) -> None:
    """Create a swarm key: every peer of the swarm needs a copy of this file."""
    from gt_ext.swarm.auth import SwarmKey

    if out.exists():
        raise GtExtError(f"{out} already exists: refusing to overwrite a swarm key")
    key = SwarmKey.generate()
    key.save(out)
    print(f"wrote swarm key {out} (fingerprint {key.fingerprint()})")


@app.command(context_settings={"allow_interspersed_args": True})
def start(
    role: Annotated[str, typer.Option("--role", help="Gas Town role to train (witness, deacon, ...)")],
    corpus: Annotated[Path, typer.Option("--corpus", help="exported corpus folder (gt corpus export --out)")],
    out: Annotated[Path, typer.Option("--out", help="run folder (same layout as `gt-ext train`)")] = Path("swarm-run"),
    task: Annotated[str | None, typer.Option("--task", help="train one task partition only")] = None,
    initial_peers: Annotated[list[str] | None, typer.Option("--initial-peers", help="multiaddr of a running peer (repeatable)")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help="HOST:PORT to listen on (default 127.0.0.1, free port)")] = None,
    swarm_key: Annotated[Path | None, typer.Option("--swarm-key", help="swarm key file (or $GT_SWARM_KEY_FILE)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="training config YAML/TOML")] = None,
    target_batch_size: Annotated[int | None, typer.Option(help="rows per global step, all peers together")] = None,
    matchmaking_time: Annotated[float, typer.Option(help="seconds to form an averaging group")] = 5.0,
    averaging_timeout: Annotated[float, typer.Option(help="seconds before an averaging round is given up")] = 60.0,
    power_sgd_rank: Annotated[int | None, typer.Option(help="compress gradients with PowerSGD of this rank")] = None,
    lockstep: Annotated[bool, typer.Option(help="one batch per peer per step, wait for the others")] = False,
    shard: Annotated[str | None, typer.Option(help="K/N: this peer takes rows K of a shared N-way batch")] = None,
    stale_after: Annotated[float, typer.Option(help="seconds of silence before a peer counts as lost")] = 30.0,
    min_peers: Annotated[int, typer.Option(help="wait until this many peers (self included) are up")] = 1,
    group_size: Annotated[int | None, typer.Option(help="averaging group size: rounds start as soon as it is full")] = None,
    join_at_step: Annotated[int, typer.Option(help="load the model, then stand by until the swarm reaches this step")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint in --out (a peer's or gt-ext train's)")] = False,
    insecure_open_swarm: Annotated[bool, typer.Option(help="run without a swarm key (anyone who can connect may join)")] = False,
    overrides: Annotated[list[str] | None, typer.Argument(metavar="[KEY=VALUE]...", help="config overrides, e.g. optim.lr=1e-4 max_steps=100 (as gt-ext train)")] = None,
) -> None:
    """Start a peer: DHT node + LoRA training; only adapter gradients are averaged with the others."""
    from gt_ext.roles import check_role
    from gt_ext.swarm.auth import SwarmKey
    from gt_ext.swarm.peer import SwarmSettings, run_peer
    from gt_ext.train.config import load_config

    check_role(role)
    if not corpus.is_dir():
        raise GtExtError(f"--corpus {corpus}: folder not found")
    from gt_ext.swarm.dht import check_initial_peers, listen_maddr

    listen_maddr(listen)  # bad addresses fail now, not after the model has loaded
    check_initial_peers(initial_peers or [])
    key = SwarmKey.from_env_or_path(swarm_key)
    if key is None and not insecure_open_swarm:
        raise GtExtError("no swarm key: pass --swarm-key FILE (make one with `gt-ext swarm keygen`) "
                         "or --insecure-open-swarm")
    cfg = load_config(config, overrides or [])
    settings = SwarmSettings(
        initial_peers=initial_peers or [], listen=listen, target_batch_size=target_batch_size,
        matchmaking_time=matchmaking_time, averaging_timeout=averaging_timeout, power_sgd_rank=power_sgd_rank,
        lockstep=lockstep, shard=_shard(shard), stale_after_s=stale_after, min_peers=min_peers,
        group_size=group_size, join_at_step=join_at_step,
    )
    out.mkdir(parents=True, exist_ok=True)
    print(f"starting swarm peer for role {role}: run folder {out}", file=sys.stderr)
    info = run_peer(corpus, role, out, cfg, settings, key, task=task, resume=resume, progress=True)
    m = info["metrics"]
    print(f"{info['status']}: {m['steps']} steps, val loss {m['val_loss_start']:.4f} -> {m['val_loss_end']:.4f}, "
          f"adapter in {out / 'adapter'}")
    if info["status"] == "stopped":
        from gt_ext.train.cli import EXIT_STOPPED

        raise typer.Exit(EXIT_STOPPED)  # time limit before max_steps: resume from the checkpoint


@app.command()
def status(
    run: Annotated[Path | None, typer.Option("--run", help="a peer's run folder (reads swarm.json for addresses)")] = None,
    initial_peers: Annotated[list[str] | None, typer.Option("--initial-peers", help="multiaddr of a running peer")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="swarm name (default: from --run)")] = None,
    swarm_key: Annotated[Path | None, typer.Option("--swarm-key", help="swarm key file (or $GT_SWARM_KEY_FILE)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show the live peers of a swarm (or the stages and trainer of a pipeline run) and their metrics
    (loss, tokens/s, step, replicas, skipped batches)."""
    from gt_ext.swarm import dht as swarm_dht
    from gt_ext.swarm.auth import SwarmKey

    peers = list(initial_peers or [])
    if run is not None:
        sj = run / "swarm.json"
        if not sj.is_file():
            raise GtExtError(f"--run {run}: no swarm.json (not a swarm run folder)")
        meta = json.loads(sj.read_text())
        peers = peers or list(meta.get("addrs", []))
        run_id = run_id or meta.get("run_id")
    if not peers or not run_id:
        raise GtExtError("status needs --run RUN_DIR, or --initial-peers ADDR and --run-id NAME")
    key = SwarmKey.from_env_or_path(swarm_key)
    dht = swarm_dht.start_dht(peers, None, key, run_id=None, client_mode=True, username="status")
    try:
        table = swarm_dht.read_metrics(dht, run_id)
    finally:
        dht.shutdown()
    if as_json:
        print(json.dumps({"run_id": run_id, "peers": table}, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"swarm {run_id}: {len(table)} peer(s)")
    for col in ("peer", "role", "state", "step", "loss", "val loss", "tokens/s", "peers", "nan skips"):
        t.add_column(col)

    def fmt(v: object, spec: str = ".4f") -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    for pid, m in sorted(table.items()):
        # pipeline runs: stages say which layers they hold, the trainer says "trainer"
        what = f"layers {m['layers']}" if m.get("layers") else str(m.get("role", "peer"))
        t.add_row(pid[-10:], what, str(m.get("state", "?")), str(m.get("epoch", "-")), fmt(m.get("loss")),
                  fmt(m.get("val_loss")), fmt(m.get("tokens_per_s"), ".1f"), str(m.get("peers", "-")),
                  str(m.get("nan_skips", 0)))
    Console().print(t)
