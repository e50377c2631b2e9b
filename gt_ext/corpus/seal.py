"""Suspected secrets in held-back examples are stored encrypted, never verbatim.

An example the scrubber is unsure about (an unexplained high-entropy string, a keyword secret)
goes to quarantine for a human. Its text is stored with each uncertain span replaced by a marker,
`<SEALED:high_entropy_string:0>`, and the span's value is kept apart (table `sealed` of the corpus
store), encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) under a key file,
so `corpus.db`, its backups and anything that prints stored text hold no suspected secret. The same
goes for what `gt corpus rescan` finds in stored text.

The key is `<store>/quarantine.key` (0600, made on first use), or the file named by
$GT_EXT_QUARANTINE_KEY to keep it away from the database. `gt corpus quarantine show --reveal`
decrypts for the reviewer; `release` puts uncertain values back (the reviewer judged them harmless)
and certain ones (a rescan's new detector hit) as their typed placeholder; `drop` deletes both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gt_ext.errors import GtExtError

KEY_ENV = "GT_EXT_QUARANTINE_KEY"
KEY_FILE = "quarantine.key"
MARKER_RE = re.compile(r"<SEALED:[a-z0-9_]+:\d+>")


@dataclass(frozen=True)
class Sealed:
    """One sealed span: its marker in the stored text, the encrypted value, and what `release`
    puts in its place (None: the value itself; else a typed placeholder)."""

    marker: str
    token: str
    placeholder: str | None = None


def key_path(store_root: str | os.PathLike) -> Path:
    """$GT_EXT_QUARANTINE_KEY, else `<store>/quarantine.key`."""
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else Path(store_root) / KEY_FILE


class Sealer:
    """Encrypts and decrypts span values with the store's key (made on first encryption)."""

    def __init__(self, store_root: str | os.PathLike):
        self.path = key_path(store_root)
        self._fernet = None

    def _key(self, create: bool):
        from cryptography.fernet import Fernet

        if self._fernet is None:
            if not self.path.is_file():
                if not create:
                    raise GtExtError(f"{self.path}: quarantine key missing; sealed values cannot be read "
                                     f"(set {KEY_ENV} to the key file they were sealed with)")
                self._create(Fernet.generate_key())
            data = self.path.read_bytes().strip()
            try:
                self._fernet = Fernet(data)
            except ValueError:
                raise GtExtError(f"{self.path}: not a quarantine key (expected a Fernet key)") from None
        return self._fernet

    def _create(self, key: bytes) -> None:
        """Write a new key: to a temp file, then hard-linked into place, so two processors
        starting at once keep one key and no reader ever sees a half-written file."""
        import tempfile

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".quarantine-key.", dir=self.path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process made it first: use that one
        finally:
            os.unlink(tmp)

    def encrypt(self, value: str) -> str:
        """The value as a Fernet token (text)."""
        return self._key(create=True).encrypt(value.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """A token back to its value; GtExtError when the key does not match."""
        from cryptography.fernet import InvalidToken

        try:
            return self._key(create=False).decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise GtExtError(f"{self.path}: this key did not seal these values (wrong or replaced key)") from None


def seal_findings(text: str, findings: Iterable, sealer: Sealer, counter: Callable[[], int],
                  seal_certain: bool = False) -> tuple[str, list[Sealed]]:
    """`text` with its findings (scrub `Finding`s, spans of this text, non-overlapping) replaced:
    uncertain ones by a marker whose value is sealed; certain ones by their placeholder, or, with
    `seal_certain` (a rescan of stored text), sealed too, remembering the placeholder for release.
    `counter()` numbers markers uniquely within one example."""
    out, sealed, pos = [], [], 0
    for f in sorted(findings, key=lambda f: f.start):
        if f.start < pos:
            continue
        out.append(text[pos:f.start])
        certain = f.confidence == "certain" and f.placeholder
        if certain and not seal_certain:
            out.append(f.placeholder)
        else:
            marker = f"<SEALED:{re.sub(r'[^a-z0-9_]+', '_', f.type.lower())}:{counter()}>"
            out.append(marker)
            sealed.append(Sealed(marker, sealer.encrypt(text[f.start:f.end]), f.placeholder if certain else None))
        pos = f.end
    out.append(text[pos:])
    return "".join(out), sealed


def unseal(text: str, sealed: dict[str, Sealed], sealer: Sealer, reveal_all: bool = True) -> str:
    """`text` with markers replaced: by the decrypted value (`reveal_all`, or a span without a
    placeholder), else by the span's placeholder."""
    def sub(m: re.Match) -> str:
        s = sealed.get(m.group(0))
        if s is None:
            return m.group(0)
        if s.placeholder is not None and not reveal_all:
            return s.placeholder
        return sealer.decrypt(s.token)

    return MARKER_RE.sub(sub, text)


def counter_from(start: int = 0) -> Callable[[], int]:
    """A counter for `seal_spans` markers."""
    n = [start - 1]

    def nxt() -> int:
        n[0] += 1
        return n[0]

    return nxt
