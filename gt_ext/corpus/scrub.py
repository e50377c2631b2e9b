"""Secret scrubbing: a fast regex layer, then detect-secrets on what remains, then a confidence call.

Certain findings are replaced in place by typed placeholders (``<SECRET:aws_access_key>``, ``<IP>``,
``<EMAIL>``, ``<PATH:home>``, ``<USER>``). Uncertain ones (a high-entropy string we cannot explain,
a keyword secret detect-secrets saw but we could not pin down) leave the text as is and mark the
whole example for quarantine: a human decides, nothing goes in silently.

A `Finding` carries type, span and confidence but never the matched value, so findings can be
printed, logged and stored without leaking what they found.
"""

from __future__ import annotations

import getpass
import ipaddress
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from gt_ext.corpus import credentials

log = logging.getLogger(__name__)

CERTAIN = "certain"
UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class Finding:
    """One detected secret or identifier: where (span in the ORIGINAL text), what, how sure."""

    type: str
    start: int
    end: int
    confidence: str  # "certain" -> replaced; "uncertain" -> quarantine
    detector: str  # "regex" or "detect-secrets:<plugin>"
    placeholder: str | None = None

    def to_dict(self) -> dict:
        """JSON-friendly form (no secret value, by construction)."""
        return asdict(self)


@dataclass
class ScrubResult:
    """Scrubbed text plus what was found; `quarantine` is True when any finding is uncertain."""

    text: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def quarantine(self) -> bool:
        return any(f.confidence == UNCERTAIN for f in self.findings)

    def counts(self) -> dict[str, int]:
        """Findings per type."""
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.type] = out.get(f.type, 0) + 1
        return out


# --- regex layer ---------------------------------------------------------------------------------
# (type, pattern, group). `group` is the capture group to replace (0 = whole match), so context words
# such as "Authorization: Bearer" stay readable and only the credential itself becomes a placeholder.
_B = r"(?<![A-Za-z0-9_\-])"  # token boundary on the left (\b treats "-" and "_" badly)
_E = r"(?![A-Za-z0-9_\-])"
_SECRET_PATTERNS: list[tuple[str, str, int]] = [
    ("private_key", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)", 0),
    ("aws_access_key", _B + r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}" + _E, 0),
    ("aws_secret_key", r"(?i)aws_?secret_?(?:access_?)?key[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])", 1),
    ("github_token", _B + r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})" + _E, 0),
    ("gitlab_token", _B + r"(?:glpat|gldt|glrt|glsoat|glptt)-[A-Za-z0-9_\-]{20,}" + _E, 0),
    ("slack_token", _B + r"xox[abposre]-[A-Za-z0-9\-]{10,}" + _E, 0),
    ("slack_webhook", r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_\-]{20,}", 0),
    ("discord_webhook", r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]{30,}", 0),
    ("stripe_key", _B + r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}" + _E, 0),
    ("anthropic_key", _B + r"sk-ant-[A-Za-z0-9_\-]{20,}" + _E, 0),
    ("openai_key", _B + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}" + _E, 0),
    ("google_api_key", _B + r"AIza[0-9A-Za-z_\-]{35}" + _E, 0),
    ("google_oauth_secret", _B + r"GOCSPX-[A-Za-z0-9_\-]{28}" + _E, 0),
    ("google_oauth_token", _B + r"ya29\.[0-9A-Za-z_\-]{20,}" + _E, 0),
    ("jwt", _B + r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}" + _E, 0),
    ("npm_token", _B + r"npm_[A-Za-z0-9]{36}" + _E, 0),
    ("pypi_token", _B + r"pypi-AgE[A-Za-z0-9_\-]{50,}" + _E, 0),
    ("sendgrid_key", _B + r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}" + _E, 0),
    ("twilio_key", _B + r"SK[0-9a-f]{32}" + _E, 0),
    ("mailchimp_key", _B + r"[0-9a-f]{32}-us[0-9]{1,2}" + _E, 0),
    ("telegram_bot_token", _B + r"\d{8,10}:AA[A-Za-z0-9_\-]{33}" + _E, 0),
    ("discord_bot_token", _B + r"[MNO][A-Za-z\d_\-]{23,25}\.[A-Za-z\d_\-]{6}\.[A-Za-z\d_\-]{27,}" + _E, 0),
    ("square_token", _B + r"sq0(?:atp|csp)-[0-9A-Za-z_\-]{22,43}" + _E, 0),
    ("shopify_token", _B + r"shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}" + _E, 0),
    ("huggingface_token", _B + r"hf_[A-Za-z0-9]{34,}" + _E, 0),
    ("digitalocean_token", _B + r"do[por]_v1_[a-f0-9]{64}" + _E, 0),
    ("databricks_token", _B + r"dapi[a-f0-9]{32}(?:-\d)?" + _E, 0),
    ("linear_key", _B + r"lin_api_[A-Za-z0-9]{40}" + _E, 0),
    ("doppler_token", _B + r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}" + _E, 0),
    ("age_secret_key", _B + r"AGE-SECRET-KEY-1[0-9A-Z]{58}" + _E, 0),
    ("artifactory_token", _B + r"AKC[a-zA-Z0-9]{10,}" + _E, 0),
    ("azure_storage_key", r"(?i)AccountKey=([A-Za-z0-9+/]{86,88}={0,2})", 1),
    ("atlassian_token", _B + r"ATATT3[A-Za-z0-9_\-=]{100,}" + _E, 0),
    ("grafana_token", _B + r"glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}" + _E, 0),
    ("vault_token", _B + r"hv[sb]\.[A-Za-z0-9_\-]{24,}" + _E, 0),
    ("newrelic_key", _B + r"NRAK-[A-Z0-9]{27}" + _E, 0),
    ("sentry_dsn", r"https://([0-9a-f]{32})@[a-z0-9.\-]+\.ingest\.sentry\.io", 1),
    ("postman_key", _B + r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}" + _E, 0),
    ("bearer_token", r"(?i)\bbearer\s+([A-Za-z0-9._~+/\-]{16,}=*)", 1),
    ("basic_auth", r"(?i)\bauthorization:\s*basic\s+([A-Za-z0-9+/]{12,}={0,2})", 1),
    ("url_password", r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@\"'<>]+:([^\s@/\"'<>]+)@", 1),
    # key = value / key: value assignments with a credential-ish key. The value must not look like a
    # reference ($VAR, ${VAR}, <placeholder>, ***); everything else is treated as a real credential.
    ("password", r"(?i)(?:\b|_)(?:password|passwd|pwd|passphrase|db_pass)[\"']?\s*(?::|=|:=)\s*[\"']?(?![$<*{%])([^\s\"',;]{4,})", 1),
    ("secret", r"(?i)(?:\b|_)(?:secret|secret_key|client_secret|api_?key|apikey|access_?token|auth_?token|private_?key|token)[\"']?\s*(?::|=|:=)\s*[\"']?(?![$<*{%])([A-Za-z0-9_\-./+=]{12,})", 1),
]
_SECRET_RES = [(t, re.compile(p), g) for t, p, g in _SECRET_PATTERNS]
_KEYWORD_TYPES = {"password", "secret"}  # found by a keyword, so the value itself must look like a credential

_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6_RE = re.compile(r"(?<![:\w])(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}(?![:\w])")
_HOME_RE = re.compile(r"(/home/|/Users/|[A-Za-z]:\\Users\\)([A-Za-z0-9._\-]+)")
_ROOT_HOME_RE = re.compile(r"(?<![\w/])/root(?=/|\b)")
# Addresses that identify no one: loopback and unspecified. Kept, because "bind 127.0.0.1" is a
# convention the models should learn.
_KEEP_IPS = {"127.0.0.1", "0.0.0.0", "::1"}
# Generic account names identify no one and are common words in commands: never replaced.
_GENERIC_USERS = {"root", "user", "admin", "ubuntu", "runner", "git", "node", "app", "www", "data",
                  "postgres", "debian", "ec2-user", "docker", "nobody", "shared", "guest", "test"}

# --- detect-secrets layer ------------------------------------------------------------------------
# Only lines that could possibly trip a detect-secrets plugin are scanned: its plugins need either a
# long token-like run (keys, entropy strings) or a credential keyword. This prefilter is what makes
# the combined scrubber faster than running detect-secrets over every line.
_DS_PREFILTER = re.compile(
    r"[A-Za-z0-9+/=_\-.]{16,}|(?i:pass|secret|key|pwd|token|auth|contrase|cred)"
)
# Look-alikes that entropy detectors flag but which identify nothing: git SHAs and other hex digests,
# UUIDs, integrity/digest prefixes, data URIs.
_HEX_RE = re.compile(r"^[0-9a-fA-F]{7,128}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_BENIGN_CONTEXT_RE = re.compile(
    r"(?i)(sha(?:1|224|256|384|512)[-:]|md5[-:]|integrity|checksum|digest|data:[a-z]+/[a-z0-9.+\-]+;base64,|commit|\brev\b|hash)"
)
_PLACEHOLDER_RE = re.compile(r"<(?:SECRET:[a-z0-9_]+|IP|EMAIL|USER|PATH:home|SEALED:[a-z0-9_]+:\d+)>")
# detect-secrets plugin types that name a specific credential format: when it sees one our regexes
# missed and we can find its exact value, that is a certain finding.
_DS_SPECIFIC = {
    "AWS Access Key", "Artifactory Credentials", "Azure Storage Account access key", "Cloudant Credentials",
    "Discord Bot Token", "GitHub Token", "GitLab Token", "IBM Cloud IAM Key", "IBM COS HMAC Credentials",
    "JSON Web Token", "Mailchimp Access Key", "NPM tokens", "OpenAI Token", "Private Key", "PyPI Token",
    "SendGrid API Key", "Slack Token", "SoftLayer Credentials", "Square OAuth Secret", "Stripe Access Key",
    "Telegram Bot Token", "Twilio API Key",
}
_DS_IGNORED = {"Public IP (ipv4)", "Basic Auth Credentials"}  # covered by our own IP / URL rules


@lru_cache(maxsize=1)
def _ds_plugins() -> tuple:
    """detect-secrets' default plugins (built once; its settings are a process-global)."""
    from detect_secrets.settings import default_settings, get_plugins

    with default_settings():
        return tuple(get_plugins())


def _slug(ds_type: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", ds_type.lower()).strip("_")


def _usernames() -> set[str]:
    names = set()
    for v in (os.environ.get("USER"), os.environ.get("LOGNAME")):
        if v:
            names.add(v)
    try:
        names.add(getpass.getuser())
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        pass
    return {n for n in names if len(n) >= 3 and n not in _GENERIC_USERS}


class Scrubber:
    """Scrub text. One instance is reusable and thread-compatible (no mutable state after init)."""

    def __init__(self, extra_usernames: Iterable[str] = (), use_detect_secrets: bool = True):
        self.usernames = _usernames() | {u for u in extra_usernames if u}
        self.use_detect_secrets = use_detect_secrets
        self._user_re = (
            re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(map(re.escape, self.usernames), key=len, reverse=True)) + r")(?![A-Za-z0-9_])")
            if self.usernames else None
        )

    # Spans are collected on the original text first, then applied right to left, so every
    # Finding's (start, end) refers to the input the caller gave.
    def scan(self, text: str) -> list[Finding]:
        """All findings in `text`, non-overlapping, sorted by start."""
        found: list[Finding] = []
        # Placeholders from an earlier pass are off limits: scrubbing is idempotent, and
        # "<SECRET:aws_access_key>" must not itself look like a "secret: value" assignment.
        taken: list[tuple[int, int]] = [m.span() for m in _PLACEHOLDER_RE.finditer(text)]

        def add(ftype: str, s: int, e: int, conf: str, det: str, ph: str | None) -> None:
            if e <= s or any(s < te and ts < e for ts, te in taken):
                return
            taken.append((s, e))
            found.append(Finding(ftype, s, e, conf, det, ph))

        for ftype, rx, grp in _SECRET_RES:
            for m in rx.finditer(text):
                s, e = m.span(grp)
                if ftype in _KEYWORD_TYPES and not credentials.is_credential_value(text[s:e]):
                    continue  # `secret: xxxxxxxx`, `secret = settings.SECRET_KEY`: a placeholder or code
                add(ftype, s, e, CERTAIN, "regex", f"<SECRET:{ftype}>")
        # Credentials known by their name or layout (NAME=value, config files, flags, netrc) and
        # unquoted random-looking tokens: after the fixed formats, so those keep their own type.
        for ftype, s, e in credentials.find(text):
            add(ftype, s, e, CERTAIN, "regex", f"<SECRET:{ftype}>")
        for m in _EMAIL_RE.finditer(text):
            add("email", *m.span(), CERTAIN, "regex", "<EMAIL>")
        for m in _HOME_RE.finditer(text):
            # /home/alice/x -> <PATH:home>/x : the user name goes with the prefix.
            add("home_path", m.start(1), m.end(2), CERTAIN, "regex", "<PATH:home>")
            name = m.group(2)
            if len(name) >= 3 and name not in _GENERIC_USERS:
                # The same name elsewhere (prompts, `whoami` output) identifies the same person.
                for um in re.finditer(r"(?<![A-Za-z0-9_/])" + re.escape(name) + r"(?![A-Za-z0-9_])", text):
                    add("username", *um.span(), CERTAIN, "regex", "<USER>")
        for m in _ROOT_HOME_RE.finditer(text):
            add("home_path", *m.span(), CERTAIN, "regex", "<PATH:home>")
        for m in _IPV4_RE.finditer(text):
            ip = m.group(0)
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                continue  # 999.1.1.1 is a version string, not an address
            if ip not in _KEEP_IPS:
                add("ip", *m.span(), CERTAIN, "regex", "<IP>")
        for m in _IPV6_RE.finditer(text):
            try:
                ipaddress.IPv6Address(m.group(0))
            except ValueError:
                continue
            if m.group(0) not in _KEEP_IPS:
                add("ip", *m.span(), CERTAIN, "regex", "<IP>")
        if self._user_re is not None:
            for m in self._user_re.finditer(text):
                add("username", *m.span(), CERTAIN, "regex", "<USER>")
        if self.use_detect_secrets:
            for f in self._detect_secrets(text, taken):
                add(f.type, f.start, f.end, f.confidence, f.detector, f.placeholder)
        found.sort(key=lambda f: f.start)
        return found

    def _detect_secrets(self, text: str, taken: list[tuple[int, int]]) -> list[Finding]:
        """Run detect-secrets on lines our regexes left something suspicious in."""
        plugins = _ds_plugins()
        out: list[Finding] = []
        pos = 0
        for line in text.splitlines(keepends=True):
            line_start = pos
            pos += len(line)
            body = line.rstrip("\r\n")
            if not body or not _DS_PREFILTER.search(body):
                continue
            # Blank out what the regex layer already handled so detect-secrets judges the rest only.
            masked = list(body)
            for ts, te in taken:
                for i in range(max(ts, line_start), min(te, line_start + len(body))):
                    masked[i - line_start] = " "
            mline = "".join(masked)
            if not _DS_PREFILTER.search(mline):
                continue
            for plugin in plugins:
                for ps in plugin.analyze_line(filename="transcript.txt", line=mline, line_number=1):
                    f = self._judge(ps.type, ps.secret_value or "", mline, line_start, plugin)
                    if f is not None:
                        out.append(f)
        return out

    @staticmethod
    def _judge(ds_type: str, value: str, line: str, line_start: int, plugin) -> Finding | None:
        """Decide what a detect-secrets hit means: certain, uncertain, or a known look-alike."""
        if ds_type in _DS_IGNORED:
            return None
        det = f"detect-secrets:{type(plugin).__name__}"
        idx = line.find(value) if value else -1
        # Spans for uncertain findings cover the value if we can locate it, else the whole line.
        s, e = (line_start + idx, line_start + idx + len(value)) if idx >= 0 else (line_start, line_start + len(line))
        if ds_type in _DS_SPECIFIC:
            if idx >= 0 and len(value) >= 12:
                slug = _slug(ds_type)
                return Finding(slug, s, e, CERTAIN, det, f"<SECRET:{slug}>")
            return Finding(_slug(ds_type), s, e, UNCERTAIN, det)
        if ds_type in ("Hex High Entropy String", "Base64 High Entropy String"):
            if _HEX_RE.match(value) or _UUID_RE.match(value) or _PLACEHOLDER_RE.search(value):
                return None
            before = line[max(0, idx - 40): idx] if idx >= 0 else line
            if _BENIGN_CONTEXT_RE.search(before):
                return None
            return Finding("high_entropy_string", s, e, UNCERTAIN, det)
        if ds_type == "Secret Keyword":
            if not value or _PLACEHOLDER_RE.search(value) or value.startswith(("$", "<", "{")):
                return None
            return Finding("keyword_secret", s, e, UNCERTAIN, det)
        return Finding(_slug(ds_type), s, e, UNCERTAIN, det)

    def scrub(self, text: str) -> ScrubResult:
        """Replace certain findings by placeholders; keep uncertain spans and report them."""
        findings = self.scan(text)
        return ScrubResult(replace_certain(text, findings), findings)


def replace_certain(text: str, findings: list[Finding]) -> str:
    """`text` with its certain findings (spans of this very text) replaced by their placeholders."""
    out = text
    for f in sorted(findings, key=lambda f: f.start, reverse=True):
        if f.confidence == CERTAIN and f.placeholder:
            out = out[: f.start] + f.placeholder + out[f.end:]
    return out


def detectors_fingerprint(scrubber: Scrubber | None = None) -> str:
    """A hash of everything that decides what the scrubber finds: this module's and
    `credentials`' patterns, lists and thresholds, detect-secrets' version and plugins, and the
    user names it looks for. Stored with the corpus, so `gt corpus rescan` knows when stored
    examples were scrubbed by other rules."""
    import hashlib
    import sys

    sc = scrubber or default_scrubber()
    parts: list[str] = []
    for mod in (sys.modules[__name__], credentials):  # credentials: the name/layout/entropy rules
        for name, value in sorted(vars(mod).items()):
            if not name.lstrip("_").isupper():
                continue
            if isinstance(value, re.Pattern):
                parts.append(f"{name}={value.pattern}")
            elif isinstance(value, (str, int, float, frozenset, set, tuple, list, dict)):
                parts.append(f"{name}={sorted(map(repr, value)) if isinstance(value, (set, frozenset)) else repr(value)}")
    if sc.use_detect_secrets:
        from importlib.metadata import version

        parts.append(f"detect-secrets {version('detect-secrets')}: "
                     + ",".join(sorted(type(p).__name__ for p in _ds_plugins())))
    parts.append("users=" + ",".join(sorted(sc.usernames)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def default_scrubber() -> Scrubber:
    """A process-wide scrubber with the current user's names."""
    return Scrubber()


def scrub_text(text: str) -> ScrubResult:
    """Scrub one text with the default scrubber."""
    return default_scrubber().scrub(text)


@lru_cache(maxsize=1)
def _regex_scrubber() -> Scrubber:
    return Scrubber(use_detect_secrets=False)


def safe_message(text: str) -> str:
    """An error or log message with paths, user names, addresses and credentials replaced
    (regex layer only: cheap enough for every message)."""
    return _regex_scrubber().scrub(text).text
