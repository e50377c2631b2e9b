"""Credentials that no fixed token format describes: found by the name they are stored under, by
the file layout they sit in, or by looking random. The scrubber's regex layer calls `find()`.

What is found here (each as `(type, start, end)` of the VALUE only, so names stay readable):

- `NAME=value` and `export NAME=value` (shell, `.env`, Dockerfile `ENV`, INI/TOML/.pypirc lines,
  `.npmrc` `_authToken=`/`_auth=`/`_password=`) where NAME says secret, token, key, password...;
- `"name": "value"` (JSON: docker `config.json` auths, cloud CLI credential files, token caches) and
  `name: value` at the start of a YAML line (kubeconfig tokens and client keys, gh `hosts.yml`);
- command-line flags: `--password X`, `--token=X`, `mysql -pX`;
- `.netrc` passwords (`machine H login U password P`, or a `password P` line);
- Kubernetes env entries (`name: DB_PASSWORD` then `value: X`);
- base64-encoded PEM private keys (kubeconfig `client-key-data`), PuTTY private key lines;
- unquoted high-entropy tokens in shell and log lines (a random 40-character token after a flag,
  in a URL query or on a log line), told apart from identifiers, hashes, UUIDs and paths.

Never found (decoys): hex strings (commit ids, digests), UUIDs, references (`$VAR`, `${VAR}`,
`{{ .Values.x }}`, `%VAR%`), placeholders (`<your-token>`, `changeme`, `xxxx`, `***`), numbers,
booleans, paths, plain URLs, code (`os.environ["X"]`, `get_token()`), base64 PEM certificates.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Iterator

# --- names --------------------------------------------------------------------------------------
# A name is split into parts at separators and camelCase humps: "STRIPE_SECRET_KEY" -> stripe,
# secret, key; "refreshToken" -> refresh, token. One secret part makes it a credential name, unless
# its last part says the value is about the credential rather than the credential (a path, a TTL).
_SECRET_PARTS = {"secret", "secrets", "password", "passwd", "pwd", "pass", "passphrase", "key", "apikey",
                 "credential", "credentials", "creds", "auth", "pat", "privatekey", "secretkey", "accesskey",
                 "signingkey", "masterkey"}
# Alone, these name code as often as credentials (`key=lambda`, `"pass": "merge"`): a name that is
# just one of them needs a value that looks like a token.
_NOISY_ALONE = {"key", "pass", "auth", "pwd", "pat", "creds"}
_STRONG_PARTS = {"secret", "secrets", "password", "passwd", "pwd", "pass", "passphrase", "apikey", "credential",
                 "credentials", "privatekey", "secretkey", "accesskey"}  # enough on their own for a --flag
_NOT_VALUE_PARTS = {"path", "file", "files", "dir", "folder", "url", "uri", "endpoint", "name", "names", "id", "ids",
                    "type", "ttl", "expiry", "expires", "expiration", "timeout", "length", "len", "size", "count",
                    "limit", "limits", "enabled", "enable", "disabled", "header", "field", "env", "prefix", "suffix",
                    "region", "alg", "algorithm", "format", "mode", "host", "port", "sock", "socket", "version",
                    "hint", "policy", "scope", "scopes", "provider", "method", "location", "store", "helper", "cmd",
                    "command", "script", "var", "variable", "kind", "min", "max", "budget", "rotation", "required",
                    "hash", "fingerprint", "stdin", "prompt", "manager", "backend", "source", "sources", "usage",
                    "storage", "state", "status", "level", "bits", "data_dir", "interval", "mount", "label"}
_NAME_HINT = re.compile(r"(?i)secret|pass|pwd|key|token|auth|cred|pat")
_NAME_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")


def name_parts(name: str) -> list[str]:
    """`name` split into lowercase parts at `_ - .` and camelCase humps."""
    return [p.lower() for p in _NAME_SPLIT.split(name.strip("_-.\"' ")) if p]


def is_secret_name(name: str, strong: bool = False) -> bool:
    """Does a variable / key / flag called `name` hold a credential? `strong` asks for a word that
    means secret on its own (flags: `--key` is too common, `--api-key` is not)."""
    if not _NAME_HINT.search(name):
        return False  # most names say nothing of the sort: one regex answers before any splitting
    parts = name_parts(name)
    if not parts or parts[-1] in _NOT_VALUE_PARTS:
        return False
    words = _STRONG_PARTS if strong else _SECRET_PARTS
    if any(p in words or p.endswith("token") or p.endswith("secret") or p.endswith("password") for p in parts):
        return True
    joined = "".join(parts)  # "api_key" -> "apikey", "MYSECRET" -> "mysecret"
    return any(w in joined for w in ("secret", "password", "passwd", "apikey", "accesskey", "privatekey"))


# --- values -------------------------------------------------------------------------------------
_PLACEHOLDER_VALUE = re.compile(
    r"""(?ix)^(?:
        x{3,} | \*{3,} | \.{3,} | -+ | _+ | \#+ | 0+ | (?:redacted|removed|hidden|masked)
      | change[_\-]?me | placeholder | secret | password | token | your[_\-].* | my[_\-]?(?:token|secret|password|key)
      | (?:none|null|nil|undefined|empty|unset|true|false|yes|no|on|off|required|optional|tbd|todo)
      | -?\d+(?:\.\d+)?[smhdkKMG]?b?                                   # numbers, durations, sizes
      | \d+\.\d+\.\d+.*                                                  # versions
    )$""")
_REFERENCE_VALUE = re.compile(r"^(?:\$|%[A-Za-z_]|\{\{|<|\[|\(|`|@|!|&)")
# Code, not a value: a call or subscript, attribute access on word-like names (`settings.SECRET_KEY`;
# a kubeadm token `abcdef.0a1b2c3d4e5f6a7b` has digits inside its parts), well-known objects.
_CODE_VALUE = re.compile(r"""[()\[\]{}]|^[A-Za-z_]+\d{0,2}(?:\.[A-Za-z_]+\d{0,2})+$|^(?:os|env|process|config|settings|self|args)\.""")
_MIN_VALUE = 3


def is_credential_value(value: str) -> bool:
    """Could `value` be a real credential (not a reference, placeholder, number, path or code)?"""
    v = value.strip()
    if len(v) < _MIN_VALUE or "<SECRET:" in v or v.startswith("<"):
        return False
    if _REFERENCE_VALUE.match(v) or _PLACEHOLDER_VALUE.match(v) or _CODE_VALUE.search(v):
        return False
    if v.startswith(("/", "~/", "./", "../", "file:")) or "://" in v:
        return False  # a path, or a URL (a URL's own password is the url_password rule's)
    return True


# --- layouts --------------------------------------------------------------------------------------
_VALUE = r"""(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"'`;&|<>,()\[\]{}]+))"""
# NAME=value glued (shell, .env, ENV, npmrc `//host/:_authToken=`) anywhere on a line.
_ASSIGN_RE = re.compile(r"(?<![\w$.\-/%{])(?P<name>[A-Za-z_][A-Za-z0-9_]*)=" + _VALUE)
# key = value, key: value on a line of its own (INI, TOML, .pypirc, YAML, kubeconfig, hosts.yml).
_LINE_RE = re.compile(r"(?m)^[ \t]*(?:-[ \t]+)?(?:export[ \t]+)?(?P<name>[A-Za-z_][\w\-.]*)[ \t]*(?:=|:)[ \t]*" + _VALUE
                      + r"[ \t]*,?[ \t]*(?:#[^\n]*)?$")
# "key": "value" (JSON).
_JSON_RE = re.compile(r'"(?P<name>[A-Za-z_][\w\-.]*)"\s*:\s*"(?P<dq>(?:[^"\\\n]|\\.)*)"')
# --password X, --token=X (not --password-stdin).
_FLAG_RE = re.compile(r"(?<![\w\-])--(?P<name>[A-Za-z][\w\-]*)(?:=|[ \t]+)" + _VALUE)
_MYSQL_RE = re.compile(r"\bmysql(?:dump|admin|sh)?\b[^\n]*?\s-p(?P<bare>[^\s\"']{3,})(?P<line>)")
_NETRC_RE = re.compile(r"(?m)(?:^[ \t]*(?:machine[ \t]+\S+|default)\b[^\n]*?\b|\blogin[ \t]+\S+[ \t]+)"
                       r"(?:password|passwd)[ \t]+(?P<bare>\S+)|^[ \t]*(?:password|passwd)[ \t]+(?P<line>\S+)[ \t]*$")
_K8S_ENV_RE = re.compile(r"(?m)\bname:[ \t]*[\"']?(?P<name>[A-Za-z_][\w\-.]*)[\"']?[ \t]*\n[ \t]*(?:-[ \t]+)?value:[ \t]*"
                         + _VALUE)
_PUTTY_RE = re.compile(r"Private-Lines:[ \t]*\d+[ \t]*\r?\n(?P<bare>(?:[A-Za-z0-9+/=]+\r?\n?)+)")


_WORDLIKE = re.compile(r"^[A-Za-z]+(?:[_\-][A-Za-z]+)*$")  # `value`, `lambda`, `scrub_detectors`: no digit, no symbol
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _value_span(m: re.Match) -> tuple[int, int, str] | None:
    for g in ("dq", "sq", "bare"):
        if g in m.re.groupindex and m.group(g) is not None:
            return m.start(g), m.end(g), m.group(g)
    return None


def plausible(name: str, value: str, shell: bool) -> bool:
    """Is `name = value` a credential? In shell and env files (`export X=...`, `X=...` with an
    upper-case name) any real value is; in code and config a bare word (`token=token`,
    `key: str`, `META_KEY = "scrub_detectors"`) is a name, not a secret."""
    if not is_credential_value(value):
        return False
    if shell:
        return True
    if _WORDLIKE.match(value):
        return False
    parts = name_parts(name)
    if len(parts) == 1 and parts[0] in _NOISY_ALONE:
        return (len(value) >= 8 and not any(c.isspace() for c in value)
                and (any(c.isdigit() for c in value) or value.endswith("=") or (value.lower() != value != value.upper())))
    return True


def _named(rx: re.Pattern, text: str, ftype: str, strong: bool = False) -> Iterator[tuple[str, int, int]]:
    for m in rx.finditer(text):
        name = m.group("name")
        if not is_secret_name(name, strong=strong):
            continue
        span = _value_span(m)
        if span is None:
            continue
        start = text.rfind("\n", 0, m.start()) + 1
        shell = bool(re.search(r"\bexport[ \t]+$", text[start:m.start("name")])) or (
            rx is _ASSIGN_RE and bool(_ENV_NAME.match(name)))
        if plausible(name, span[2], shell):
            yield ftype, span[0], span[1]


# --- high-entropy tokens ------------------------------------------------------------------------
# Unquoted runs of token characters. '=' only as base64 padding at the end, so `KEY=abc` splits.
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{20,}={0,2}(?![A-Za-z0-9+/_\-=]|\.[A-Za-z0-9])")
_HEX_RE = re.compile(r"^[0-9a-fA-F\-]+$")
_UUID_IN_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_WORDISH = re.compile(r"[A-Z]?[a-z]{3,}|[A-Z]{4,}")
_BENIGN_BEFORE = re.compile(
    r"(?i)(?:sha(?:1|224|256|384|512)[-:=]|md5[-:=]|h1:|integrity|checksum|digest|base64,|commit|\brev\b|hash|"
    r"nonce|request[_\- ]?id|trace[_\- ]?id|span[_\- ]?id|etag|fingerprint|@sha256:)\W{0,3}$")


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _class_changes(s: str) -> float:
    """Share of neighbouring characters (separators dropped) whose class (upper, lower, digit)
    differs: ~0.6 for random base62, 0.1-0.3 for camelCase identifiers."""
    s = re.sub(r"[^A-Za-z0-9]", "", s)
    if len(s) < 2:
        return 0.0
    cls = ["u" if c.isupper() else "l" if c.islower() else "d" for c in s]
    return sum(a != b for a, b in zip(cls, cls[1:], strict=False)) / (len(s) - 1)


def _pem_in_base64(token: str) -> str | None:
    """'key' / 'cert' when `token` is a base64-encoded PEM block (kubeconfig *-data fields)."""
    if not token.startswith("LS0tLS1"):
        return None
    try:
        head = base64.b64decode(token[: (len(token) // 4) * 4][:96], validate=False)[:64]
    except (binascii.Error, ValueError):
        return None
    if b"PRIVATE KEY" in head:
        return "key"
    return "cert" if b"-----BEGIN" in head else None


# Calibrated on random base62 tokens (entropy p1: 3.65 bits/char at 20 characters, 4.5 at 42;
# class changes p1 0.37) against identifiers, package names and paths (bench/scrub.py decoys).
_MIN_TOKEN = 20
_ENTROPY_SHORT, _ENTROPY_LONG = 3.5, 4.0  # bits per character under / from 32 characters
_MIN_CLASS_CHANGES = 0.3
_WORDISH_MAX, _WORDISH_CAMEL = 0.7, 0.5  # share of characters in word-like runs


def looks_random(token: str) -> bool:
    """A token that reads as random characters rather than words, a hash, a UUID or a path."""
    core = token.rstrip("=")
    if len(core) < _MIN_TOKEN or _HEX_RE.match(core) or _UUID_IN_RE.search(core):
        return False
    has_digit = any(c.isdigit() for c in core)
    has_upper = any(c.isupper() for c in core)
    has_lower = any(c.islower() for c in core)
    if sum((has_digit, has_upper, has_lower)) < 2 or not has_digit:
        return False
    if "/" in core and all(len(seg) < 20 for seg in core.split("/")):
        return False  # a path: its segments are short words, a random token's are not
    alnum = re.sub(r"[^A-Za-z0-9]", "", core)
    wordish = sum(len(w) for w in _WORDISH.findall(alnum)) / max(1, len(alnum))
    if wordish >= _WORDISH_MAX or (wordish >= _WORDISH_CAMEL and _class_changes(core) < 0.4):
        return False  # camelCase / snake_case identifiers, package names
    need = _ENTROPY_SHORT if len(core) < 32 else _ENTROPY_LONG
    return _entropy(core) >= need and _class_changes(core) >= _MIN_CLASS_CHANGES


def _high_entropy(text: str) -> Iterator[tuple[str, int, int]]:
    for m in _TOKEN_RE.finditer(text):
        token = m.group(0)
        before = text[max(0, m.start() - 24): m.start()]
        if m.start() > 0 and text[m.start() - 1] in "\"'" and m.end() < len(text) and text[m.end()] == text[m.start() - 1]:
            continue  # quoted: detect-secrets' entropy plugins judge quoted strings (uncertain -> quarantine)
        pem = _pem_in_base64(token)
        if pem == "key":
            yield "private_key", m.start(), m.end()
            continue
        if pem == "cert" or _BENIGN_BEFORE.search(before):
            continue
        if looks_random(token):
            yield "high_entropy_token", m.start(), m.end()


def find(text: str) -> Iterator[tuple[str, int, int]]:
    """Every credential these rules see in `text`, as (type, start, end) of the value; spans may
    overlap (the scrubber keeps the first one that claims a span)."""
    # Substring checks first: most texts hold none of these layouts, and `in` is far cheaper than a scan.
    if "Private-Lines" in text:
        for m in _PUTTY_RE.finditer(text):
            yield "private_key", m.start("bare"), m.end("bare")
    if "value:" in text:
        yield from _named(_K8S_ENV_RE, text, "env_secret")
    if '"' in text:
        yield from _named(_JSON_RE, text, "json_secret")
    yield from _named(_LINE_RE, text, "config_secret")
    if "=" in text:
        yield from _named(_ASSIGN_RE, text, "env_secret")
    if "--" in text:
        yield from _named(_FLAG_RE, text, "flag_secret", strong=True)
    lower = text.lower()
    for rx, ftype, hint in ((_MYSQL_RE, "flag_secret", "mysql"), (_NETRC_RE, "netrc_password", "passw")):
        if hint not in lower:
            continue
        for m in rx.finditer(text):
            g = "bare" if m.group("bare") is not None else "line"  # _NETRC_RE: inline or a line of its own
            if is_credential_value(m.group(g)):
                yield ftype, m.start(g), m.end(g)
    yield from _high_entropy(text)
