"""The swarm's DHT: start a hivemind node (127.0.0.1 unless told otherwise), publish and read metrics.

Timing defaults are chosen for peers on one machine and across a LAN: generous matchmaking in
`peer.SwarmConfig`, and a metrics record that lives a few refresh periods so `status` sees peers
that are alive and forgets the dead ones.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.swarm.auth import SwarmAuthorizer, SwarmKey, publish_membership

log = logging.getLogger(__name__)

METRICS_TTL_S = 60.0
_HOST_PORT = re.compile(r"^(?P<host>[0-9.]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def listen_maddr(listen: str | None) -> str:
    """`None` -> loopback on a free port; `HOST:PORT` or a multiaddr -> that multiaddr."""
    if not listen:
        return "/ip4/127.0.0.1/tcp/0"
    if listen.startswith("/"):
        return listen
    m = _HOST_PORT.match(listen)
    if not m:
        raise GtExtError(f"--listen {listen!r}: expected HOST:PORT (e.g. 0.0.0.0:31337) or a multiaddr")
    host, port = m["host"], int(m["port"])
    if port > 65535:
        raise GtExtError(f"--listen {listen!r}: port out of range")
    if host.startswith("["):
        return f"/ip6/{host[1:-1]}/tcp/{port}"
    return f"/ip4/{host}/tcp/{port}"


def check_initial_peers(peers: Sequence[str]) -> list[str]:
    """Validate multiaddrs like /ip4/127.0.0.1/tcp/4000/p2p/Qm...; raise a one-line error otherwise."""
    from hivemind.utils.multiaddr import Multiaddr

    out = []
    for p in peers:
        try:
            Multiaddr(p)
        except Exception as e:  # multiaddr raises several types for bad input
            raise GtExtError(f"initial peer {p!r} is not a multiaddr: {e}") from None
        if "/p2p/" not in p:
            raise GtExtError(f"initial peer {p!r} lacks its /p2p/<peer id> part (copy it from the first peer's log)")
        out.append(p)
    return out


def start_dht(
    initial_peers: Sequence[str] = (),
    listen: str | None = None,
    key: SwarmKey | None = None,
    run_id: str | None = None,
    client_mode: bool = False,
    username: str = "peer",
) -> Any:
    """Start a hivemind DHT node guarded by the swarm key; publish the membership proof for `run_id`."""
    import hivemind

    kwargs: dict[str, Any] = dict(
        initial_peers=check_initial_peers(initial_peers),
        host_maddrs=[listen_maddr(listen)],
        client_mode=client_mode,
        start=True,
        # No public infrastructure: never bootstrap from IPFS, never map NAT ports.
        use_ipfs=False,
        nat_port_map=False,
        use_relay=False,
    )
    if key is not None:
        kwargs["authorizer"] = SwarmAuthorizer(key, username=username)
    try:
        dht = hivemind.DHT(**kwargs)
    except Exception as e:
        raise GtExtError(f"could not start the swarm DHT on {kwargs['host_maddrs'][0]}: {e}") from None
    if key is not None and run_id:
        publish_membership(dht, run_id, key)
    return dht


def visible_addrs(dht: Any) -> list[str]:
    """Multiaddrs other peers can pass as --initial-peers."""
    return [str(a) for a in dht.get_visible_maddrs()]


def metrics_key(run_id: str) -> str:
    """DHT key of the swarm's per-peer metrics (subkey = peer id hex)."""
    return f"{run_id}_metrics"


def publish_metrics(dht: Any, run_id: str, metrics: dict[str, Any], ttl_s: float = METRICS_TTL_S) -> bool:
    """Store this peer's latest metrics (loss, tokens/s, rounds, ...) under its own subkey."""
    from hivemind.utils.timed_storage import get_dht_time

    return bool(dht.store(metrics_key(run_id), subkey=dht.peer_id.to_bytes().hex(), value=dict(metrics),
                          expiration_time=get_dht_time() + ttl_s))


def read_metrics(dht: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Latest metrics of every live peer: {peer id hex: metrics}."""
    found = dht.get(metrics_key(run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return {}
    out = {}
    for sub, entry in found.value.items():
        value = getattr(entry, "value", None)
        if isinstance(value, dict):
            out[str(sub)] = value
    return out
