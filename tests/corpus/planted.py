"""A planted set of credentials (at least 30 formats) and look-alike decoys, shared by the scrub
tests and bench/scrub.py. Values are synthetic: built from a seeded RNG, valid in shape only."""

from __future__ import annotations

import base64
import hashlib
import random
import string
import uuid

A = string.ascii_letters + string.digits


def _r(rng: random.Random, n: int, alphabet: str = A) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def secrets_and_decoys(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(kind, line)], [(kind, line)]): each secret line holds one credential; decoy lines hold none."""
    rng = random.Random(seed)
    hexd, up = "0123456789abcdef", string.ascii_uppercase + string.digits
    secrets = [
        ("aws_access_key", f"export AWS_ACCESS_KEY_ID=AKIA{_r(rng, 16, up)}"),
        ("aws_secret_key", f"aws_secret_access_key = {_r(rng, 40, A + '/+')}"),
        ("github_pat", f"git remote set-url origin https://x:ghp_{_r(rng, 36)}@github.com/o/r"),
        ("github_oauth", f"GITHUB_TOKEN=gho_{_r(rng, 36)}"),
        ("github_fine", f"using github_pat_{_r(rng, 22)}_{_r(rng, 59)} for the api"),
        ("gitlab", f"CI token glpat-{_r(rng, 20)}"),
        ("slack_bot", f"SLACK=xoxb-{_r(rng, 11, string.digits)}-{_r(rng, 12, string.digits)}-{_r(rng, 24)}"),
        ("slack_webhook", f"post to https://hooks.slack.com/services/T{_r(rng, 8, up)}/B{_r(rng, 8, up)}/{_r(rng, 24)}"),
        ("stripe_live", f"stripe key sk_live_{_r(rng, 24)}"),
        ("stripe_test", f"rk_test_{_r(rng, 24)} in config"),
        ("openai", f"OPENAI_API_KEY=sk-proj-{_r(rng, 48)}"),
        ("anthropic", f"ANTHROPIC_API_KEY=sk-ant-api03-{_r(rng, 80)}"),
        ("google_api", f"maps key AIza{_r(rng, 35, A + '-_')}"),
        ("google_oauth", f"client secret GOCSPX-{_r(rng, 28)}"),
        ("jwt", "Cookie: session=eyJ" + _r(rng, 30) + ".eyJ" + _r(rng, 40) + "." + _r(rng, 43)),
        ("npm", f"//registry.npmjs.org/:_authToken=npm_{_r(rng, 36)}"),
        ("pypi", f"password = pypi-AgEIcHlwaS5vcmc{_r(rng, 60)}"),
        ("sendgrid", f"SG.{_r(rng, 22)}.{_r(rng, 43)}"),
        ("twilio", f"twilio api key SK{_r(rng, 32, hexd)}"),
        ("mailchimp", f"mc key {_r(rng, 32, hexd)}-us14"),
        ("telegram", f"bot {rng.randint(10**8, 10**9)}:AA{_r(rng, 33)}"),
        ("square", f"sq0atp-{_r(rng, 22)}"),
        ("shopify", f"shpat_{_r(rng, 32, hexd)}"),
        ("huggingface", f"HF_TOKEN=hf_{_r(rng, 34)}"),
        ("digitalocean", f"dop_v1_{_r(rng, 64, hexd)}"),
        ("databricks", f"dapi{_r(rng, 32, hexd)}"),
        ("linear", f"lin_api_{_r(rng, 40)}"),
        ("doppler", f"dp.pt.{_r(rng, 43)}"),
        ("age", f"AGE-SECRET-KEY-1{_r(rng, 58, up)}"),
        ("azure_storage", f"DefaultEndpointsProtocol=https;AccountName=x;AccountKey={_r(rng, 86, A + '+/')}==;"),
        ("vault", f"VAULT_TOKEN=hvs.{_r(rng, 90)}"),
        ("newrelic", f"NRAK-{_r(rng, 27, up)}"),
        ("bearer", f"curl -H 'Authorization: Bearer {_r(rng, 40)}' https://api.example.com"),
        ("basic_auth", f"Authorization: Basic {base64.b64encode(_r(rng, 20).encode()).decode()}"),
        ("url_password", f"DATABASE_URL=postgres://app:{_r(rng, 16)}@db.internal:5432/prod"),
        ("password_assign", f"password: {_r(rng, 14)}"),
        ("private_key", "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(_r(rng, 64, A + "+/") for _ in range(4))
         + "\n-----END RSA PRIVATE KEY-----"),
        ("ssh_private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\n" + _r(rng, 70, A + "+/") + "\n-----END OPENSSH PRIVATE KEY-----"),
        ("ip_private", f"ssh deploy@10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
        ("ip_public", f"resolved to 93.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
        ("email", f"contact {_r(rng, 8, string.ascii_lowercase)}@example.org for access"),
        ("home_path", f"cd /home/{_r(rng, 7, string.ascii_lowercase)}/gt/webapp"),
    ]
    decoys = []
    for i in range(45):
        k = i % 9
        if k == 0:
            decoys.append(("git_sha", f"commit {hashlib.sha1(str(rng.random()).encode()).hexdigest()}"))
        elif k == 1:
            decoys.append(("short_sha", f"merged {hashlib.sha1(str(rng.random()).encode()).hexdigest()[:8]} into main"))
        elif k == 2:
            decoys.append(("uuid", f"session_id: {uuid.UUID(int=rng.getrandbits(128))}"))
        elif k == 3:
            decoys.append(("sha256", f"sha256: {hashlib.sha256(str(rng.random()).encode()).hexdigest()}"))
        elif k == 4:
            digest = base64.b64encode(hashlib.sha512(str(rng.random()).encode()).digest()).decode()
            decoys.append(("npm_integrity", f'"integrity": "sha512-{digest}"'))
        elif k == 5:
            blob = base64.b64encode(bytes(rng.getrandbits(8) for _ in range(48))).decode()
            decoys.append(("data_uri", f'<img src="data:image/png;base64,{blob}">'))
        elif k == 6:
            decoys.append(("md5", f"md5 checksum {hashlib.md5(str(rng.random()).encode()).hexdigest()}  dist.tar.gz"))
        elif k == 7:
            decoys.append(("bead_id", f"closed gt-{_r(rng, 3, 'abcdefghjkmnpqrstuvwxyz0123456789')} and dm-{rng.randint(10, 999)}"))
        else:
            decoys.append(("docker_digest", f"image@sha256:{hashlib.sha256(str(rng.random()).encode()).hexdigest()}"))
    return secrets, decoys


def secret_value(line: str) -> str:
    """The token of a secret line most worth checking for leaks: its longest run of token chars."""
    import re

    runs = re.findall(r"[A-Za-z0-9+/_\-.=]{12,}", line)
    return max(runs, key=len) if runs else line
