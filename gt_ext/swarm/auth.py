"""Who may join a swarm: a self-hosted swarm key that every peer proves.

node0 asks Pluralis' server for an access token; here the token is minted locally from a shared
secret (the *swarm key*, 32 random bytes in a file only peers have). Two gates use it:

1. DHT requests and responses carry an `AccessToken` whose signature is an HMAC of
   (username, RSA public key, expiry) under the swarm key (`SwarmAuthorizer`, a hivemind
   `TokenAuthorizerBase`). A node without the key can neither read nor write the swarm's DHT,
   so it cannot learn group keys, progress, or metrics.
2. Averaging RPCs (join a group, send gradient parts, download state) do not pass through the DHT
   authorizer in hivemind, so `MemberGateMixin` checks every caller's libp2p peer id against a
   *membership proof* HMAC(key, peer id) that the peer published in the (key-protected) DHT. The
   libp2p connection authenticates the peer id, so a proof copied from another peer is useless.

The key itself never leaves this module: reprs, logs and errors show only its fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from pathlib import Path

# hivemind reads rpc_* stream types from `typing.AsyncIterator[...]` hints (it looks for `_name`),
# which `collections.abc.AsyncIterator[...]` lacks: keep the typing one.
from typing import Any, AsyncIterator  # noqa: UP035

from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase

from gt_ext.atomic import atomic_write_text
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

KEY_ENV = "GT_SWARM_KEY_FILE"
_TOKEN_TTL_S = 600.0
_CLOCK_SKEW_S = 60.0  # how far ahead of ours a peer's clock may run
_MEMBER_DOMAIN = b"gt-ext-swarm-member:"
_TOKEN_DOMAIN = b"gt-ext-swarm-token:"


class SwarmKey:
    """A shared swarm secret. `repr`/`str` show a fingerprint only, never the secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise GtExtError("swarm key is too short: need at least 16 bytes of secret")
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> SwarmKey:
        """A fresh random 256-bit key."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SwarmKey:
        """Read a key file written by `save` (hex on one line). Errors name the file, not its content."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise GtExtError(f"swarm key file {p} does not exist (create one with `gt-ext swarm keygen --out {p}`)")
        text = p.read_text(encoding="utf-8", errors="replace").strip()
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise GtExtError(f"swarm key file {p}: not a hex-encoded key") from None
        return cls(secret)

    @classmethod
    def from_env_or_path(cls, path: str | os.PathLike | None) -> SwarmKey | None:
        """The key from `path`, else from the file named by $GT_SWARM_KEY_FILE, else None (open swarm)."""
        if path:
            return cls.load(path)
        env = os.environ.get(KEY_ENV)
        return cls.load(env) if env else None

    def save(self, path: str | os.PathLike) -> None:
        """Write the key as hex, readable by the owner only (0600), atomically."""
        atomic_write_text(path, self._secret.hex() + "\n", mode=0o600)

    def fingerprint(self) -> str:
        """A short public identifier of the key (sha256 prefix), safe to print."""
        return hashlib.sha256(b"gt-ext-swarm-fp:" + self._secret).hexdigest()[:12]

    def mac(self, domain: bytes, *parts: bytes) -> bytes:
        """HMAC-SHA256 of length-prefixed `parts` under the key, separated by `domain`."""
        h = hmac.new(self._secret, domain, hashlib.sha256)
        for part in parts:
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def member_proof(self, peer_id: bytes) -> bytes:
        """The proof a peer publishes to show it holds the key; bound to its own libp2p peer id."""
        return self.mac(_MEMBER_DOMAIN, peer_id)

    def check_member_proof(self, peer_id: bytes, proof: bytes) -> bool:
        """Constant-time check of a membership proof."""
        return hmac.compare_digest(self.member_proof(peer_id), proof)

    def __repr__(self) -> str:
        return f"SwarmKey(fingerprint={self.fingerprint()})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # averagers run in forked processes; keep pickling explicit
        return (SwarmKey, (self._secret,))


class SwarmAuthorizer(TokenAuthorizerBase):
    """hivemind authorizer whose tokens are minted locally: HMAC(key, username, public key, expiry)."""

    def __init__(self, key: SwarmKey, username: str = "peer") -> None:
        super().__init__()
        self._key = key
        self._username = username

    def _sign(self, token: AccessToken) -> bytes:
        return self._key.mac(_TOKEN_DOMAIN, token.username.encode(), token.public_key,
                             token.expiration_time.encode())

    async def get_token(self) -> AccessToken:
        """Mint this peer's token (valid for 10 minutes, refreshed automatically)."""
        token = AccessToken(
            username=self._username,
            public_key=self.local_public_key.to_bytes(),
            expiration_time=f"{time.time() + _TOKEN_TTL_S:.3f}",
        )
        token.signature = self._sign(token)
        return token

    def is_token_valid(self, access_token: AccessToken) -> bool:
        """A token is valid when signed with the swarm key and its expiry is a finite time within
        one lifetime (plus clock skew) from now: a key holder cannot mint a token that never
        expires (`nan`, `inf`, year 9999)."""
        try:
            expires = float(access_token.expiration_time)
        except ValueError:
            return False
        now = time.time()
        if not math.isfinite(expires) or expires < now or expires > now + _TOKEN_TTL_S + _CLOCK_SKEW_S:
            return False
        return hmac.compare_digest(self._sign(access_token), access_token.signature)

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        """Refresh when less than a quarter of the lifetime is left (or the expiry is not a time)."""
        try:
            expires = float(access_token.expiration_time)
        except ValueError:
            return True
        return not math.isfinite(expires) or expires < time.time() + _TOKEN_TTL_S / 4


def members_key(run_id: str) -> str:
    """The DHT key under which peers publish their membership proofs (subkey = peer id)."""
    return f"{run_id}_members"


def publish_membership(dht: Any, run_id: str, key: SwarmKey, ttl_s: float = 120.0) -> bool:
    """Store this peer's membership proof in the DHT; call again before `ttl_s` runs out."""
    from hivemind.utils.timed_storage import get_dht_time

    pid = dht.peer_id.to_bytes()
    return bool(dht.store(members_key(run_id), subkey=pid.hex(), value=key.member_proof(pid).hex(),
                          expiration_time=get_dht_time() + ttl_s))


class Membership:
    """Checks that a remote peer published a valid membership proof for `run_id` in the DHT
    (`publish_membership`); verified peers are remembered. With `key=None` everyone is a member."""

    def __init__(self, key: SwarmKey | None, run_id: str):
        self.key, self.run_id = key, run_id
        self._verified: set[bytes] = set()

    async def check(self, dht: Any, peer_id: Any, own_peer_id: Any = None) -> bool:
        """True if `peer_id` (a libp2p PeerID, authenticated by the connection) holds the key."""
        if self.key is None:
            return True
        pid = peer_id.to_bytes()
        if pid in self._verified or (own_peer_id is not None and pid == own_peer_id.to_bytes()):
            return True
        found = await dht.get(members_key(self.run_id), latest=True, return_future=True)
        records = found.value if found is not None and isinstance(found.value, dict) else {}
        entry = records.get(pid.hex())
        proof_hex = getattr(entry, "value", None)
        try:
            ok = isinstance(proof_hex, str) and self.key.check_member_proof(pid, bytes.fromhex(proof_hex))
        except ValueError:
            ok = False
        if ok:
            self._verified.add(pid)
        return ok


class MemberGateMixin:
    """Mixin for hivemind averagers: refuse averaging/download RPCs from peers without a proof.

    Use as `class Gated(MemberGateMixin, GradientAverager)` and pass `swarm_key=`, `run_id=`.
    With `swarm_key=None` the gate is open (a swarm started without a key).
    """

    def __init__(self, *args: Any, swarm_key: SwarmKey | None = None, run_id: str = "", **kwargs: Any):
        # Set before super().__init__: with start=True the averager process forks at its end.
        self._membership = Membership(swarm_key, run_id)
        super().__init__(*args, **kwargs)

    async def _is_member(self, peer_id: Any) -> bool:
        ok = await self._membership.check(self.dht, peer_id, self.peer_id)
        if not ok:
            log.warning("refused averaging request from %s: no valid swarm membership proof", peer_id)
        return ok

    # hivemind derives the wire types of rpc_* handlers from these annotations: keep them exact.
    async def rpc_join_group(
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        """Join a group only with a valid membership proof."""
        if not await self._is_member(context.remote_id):
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):
            yield response

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        """Accept gradient parts only from members."""
        if not await self._is_member(context.remote_id):
            yield averaging_pb2.AveragingData(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for message in super().rpc_aggregate_part(stream, context):
            yield message

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        """Share adapter/optimizer state only with members."""
        if not await self._is_member(context.remote_id):
            return
        async for message in super().rpc_download_state(request, context):
            yield message
