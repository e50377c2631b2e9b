"""Swarm key: key files, access tokens, and an intruder that has no key.

The intruder is a real hivemind node on 127.0.0.1 that knows the swarm's address and run id. It
must not read or write the swarm's DHT, nor join an averaging group, nor push gradients into the
members' average.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.swarm.auth import SwarmAuthorizer, SwarmKey


def test_key_file_roundtrip_and_privacy(tmp_path: Path):
    k = SwarmKey.generate()
    p = tmp_path / "swarm.key"
    k.save(p)
    assert os.stat(p).st_mode & 0o777 == 0o600
    k2 = SwarmKey.load(p)
    assert k2.fingerprint() == k.fingerprint()
    secret_hex = p.read_text().strip()
    assert secret_hex not in repr(k) and secret_hex not in str(k)
    assert SwarmKey.generate().fingerprint() != k.fingerprint()


def test_bad_key_files_name_the_file_not_the_content(tmp_path: Path):
    with pytest.raises(GtExtError, match="does not exist"):
        SwarmKey.load(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_text("zz-not-hex-SECRETSTUFF")
    with pytest.raises(GtExtError) as e:
        SwarmKey.load(bad)
    assert "bad.key" in str(e.value) and "SECRETSTUFF" not in str(e.value)
    short = tmp_path / "short.key"
    short.write_text("abcd")
    with pytest.raises(GtExtError, match="too short"):
        SwarmKey.load(short)


def test_membership_proof_is_bound_to_peer_id():
    k = SwarmKey.generate()
    proof = k.member_proof(b"peer-1")
    assert k.check_member_proof(b"peer-1", proof)
    assert not k.check_member_proof(b"peer-2", proof)  # a copied proof is useless to another peer
    assert not SwarmKey.generate().check_member_proof(b"peer-1", proof)


def test_tokens_signed_with_another_key_are_rejected():
    k, other = SwarmKey.generate(), SwarmKey.generate()
    mine, theirs = SwarmAuthorizer(k), SwarmAuthorizer(other)
    token = asyncio.run(mine.get_token())
    assert mine.is_token_valid(token)
    assert not theirs.is_token_valid(token)
    token.expiration_time = str(float(token.expiration_time) + 3600)  # tampering breaks the HMAC
    assert not mine.is_token_valid(token)


async def _call_join(dht, node, leader_b58: str, prefix: str) -> list[int]:
    """Inside a DHT process: call a peer's averager `rpc_join_group` directly; return the codes."""
    from hivemind.p2p import PeerID
    from hivemind.proto import averaging_pb2
    from hivemind.utils.timed_storage import get_dht_time

    from gt_ext.swarm.optim import GatedGradientAverager

    stub = GatedGradientAverager.get_stub(node.p2p, PeerID.from_base58(leader_b58), namespace=prefix)
    req = averaging_pb2.JoinRequest(schema_hash=b"x", expiration=get_dht_time() + 5, group_key=f"{prefix}.0b")
    codes = []
    stream = await stub.rpc_join_group(req)
    async for msg in stream:
        codes.append(int(msg.code))
        break
    return codes


def _join_codes(caller, leader, prefix: str) -> list[int]:
    from functools import partial

    return caller.run_coroutine(partial(_call_join, leader_b58=leader.peer_id.to_base58(), prefix=prefix))


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_intruder_cannot_read_dht_nor_join_averaging():
    import hivemind
    import torch
    from hivemind.optim.grad_averager import GradientAverager
    from hivemind.utils.timed_storage import get_dht_time

    from gt_ext.swarm.dht import start_dht, visible_addrs
    from gt_ext.swarm.optim import GatedGradientAverager

    key = SwarmKey.generate()
    run = "gt-witness"
    objs = []
    try:
        a = start_dht(key=key, run_id=run)
        objs.append(a)
        b = start_dht(visible_addrs(a), key=key, run_id=run)
        objs.append(b)
        assert b.store("probe", 1, get_dht_time() + 60)
        assert a.get("probe", latest=True).value == 1  # members see each other's records

        # The intruder reaches the members' address but has no key.
        evil = hivemind.DHT(initial_peers=visible_addrs(a), start=True, ensure_bootstrap_success=False,
                            host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        objs.append(evil)
        assert evil.get("probe", latest=True) is None
        assert evil.get(f"{run}_members", latest=True) is None
        evil.store("planted", 1, get_dht_time() + 60)
        assert a.get("planted", latest=True) is None

        def params(v: float) -> list[torch.nn.Parameter]:
            p = torch.nn.Parameter(torch.zeros(8))
            p.grad = torch.full((8,), v)
            return [p]

        opts = dict(prefix=f"{run}_grad_averager", start=True, min_matchmaking_time=5.0, request_timeout=1.0)
        ga = GatedGradientAverager(params(1.0), dht=a, swarm_key=key, run_id=run, **opts)
        objs.append(ga)
        gb = GatedGradientAverager(params(3.0), dht=b, swarm_key=key, run_id=run, **opts)
        objs.append(gb)
        # The intruder runs the same averager on a DHT joined through a member's address, and
        # pushes a huge gradient.
        ge = GradientAverager(params(1e6), dht=evil, **opts)
        objs.append(ge)
        results: dict[str, object] = {}

        def go(name: str, g) -> None:
            g.accumulate_grads_(1)
            try:
                results[name] = g.step(timeout=60)
            except Exception as e:  # the intruder's step is expected to fail
                results[name] = e

        threads = [threading.Thread(target=go, args=(n, g)) for n, g in (("a", ga), ("b", gb), ("evil", ge))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        # Members averaged with each other only: (1 + 3) / 2, no trace of 1e6.
        with ga.get_tensors() as (avg,):
            assert torch.allclose(avg, torch.full((8,), 2.0)), avg
        with gb.get_tensors() as (avg,):
            assert torch.allclose(avg, torch.full((8,), 2.0)), avg
        group = results["a"]
        assert isinstance(group, dict) and len(group) == 2
        assert evil.peer_id not in group
        assert not (isinstance(results["evil"], dict) and len(results["evil"]) > 1)

        # Knowing a member's peer id is not enough: a direct join request without a membership
        # proof is refused by the gate, while a member's request reaches hivemind's matchmaking.
        from hivemind.proto import averaging_pb2

        prefix = opts["prefix"]
        assert _join_codes(evil, a, prefix) == [averaging_pb2.PROTOCOL_VIOLATION]
        member_codes = _join_codes(b, a, prefix)
        assert member_codes and member_codes[0] != averaging_pb2.PROTOCOL_VIOLATION
    finally:
        for o in reversed(objs):
            try:
                o.shutdown()
            except Exception:
                pass


@pytest.mark.parametrize("expiry", ["nan", "inf", "1e308", "253402300799", "+inf", "NaN"])
def test_a_key_holder_cannot_mint_a_token_that_never_expires(expiry):
    """Issue #20: tokens with expiry nan/inf were accepted for ever."""
    k = SwarmKey.generate()
    auth = SwarmAuthorizer(k)
    token = asyncio.run(auth.get_token())
    token.expiration_time = expiry
    token.signature = auth._sign(token)  # correctly signed: the holder has the key
    assert not auth.is_token_valid(token)
    if "n" in expiry.lower():  # nan / inf: not a time at all
        assert auth.does_token_need_refreshing(token)


def test_token_expiry_is_bounded_to_one_lifetime():
    import time

    from gt_ext.swarm import auth as auth_mod

    auth = SwarmAuthorizer(SwarmKey.generate())
    token = asyncio.run(auth.get_token())
    assert auth.is_token_valid(token)
    for ahead, ok in ((auth_mod._TOKEN_TTL_S, True), (auth_mod._TOKEN_TTL_S + auth_mod._CLOCK_SKEW_S + 120, False)):
        token.expiration_time = f"{time.time() + ahead:.3f}"
        token.signature = auth._sign(token)
        assert auth.is_token_valid(token) is ok, ahead
