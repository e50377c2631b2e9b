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


def secrets_and_decoys(seed: int = 0) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """([(kind, line, value)], [(kind, line)]): each secret line holds one credential `value`;
    decoy lines hold none."""
    rng = random.Random(seed)
    hexd, up = "0123456789abcdef", string.ascii_uppercase + string.digits
    def s(kind: str, before: str, value: str, after: str = "") -> tuple[str, str, str]:
        return kind, before + value + after, value

    b64 = A + "+/"
    secrets = [
        s("aws_access_key", "export AWS_ACCESS_KEY_ID=", "AKIA" + _r(rng, 16, up)),
        s("aws_secret_key", "aws_secret_access_key = ", _r(rng, 40, b64)),
        s("github_pat", "git remote set-url origin https://x:", "ghp_" + _r(rng, 36), "@github.com/o/r"),
        s("github_oauth", "GITHUB_TOKEN=", "gho_" + _r(rng, 36)),
        s("github_fine", "using ", f"github_pat_{_r(rng, 22)}_{_r(rng, 59)}", " for the api"),
        s("gitlab", "CI token ", "glpat-" + _r(rng, 20)),
        s("slack_bot", "SLACK=", f"xoxb-{_r(rng, 11, string.digits)}-{_r(rng, 12, string.digits)}-{_r(rng, 24)}"),
        s("slack_webhook", "post to ", f"https://hooks.slack.com/services/T{_r(rng, 8, up)}/B{_r(rng, 8, up)}/{_r(rng, 24)}"),
        s("stripe_live", "stripe key ", "sk_live_" + _r(rng, 24)),
        s("stripe_test", "", "rk_test_" + _r(rng, 24), " in config"),
        s("openai", "OPENAI_API_KEY=", "sk-proj-" + _r(rng, 48)),
        s("anthropic", "ANTHROPIC_API_KEY=", "sk-ant-api03-" + _r(rng, 80)),
        s("google_api", "maps key ", "AIza" + _r(rng, 35, A + "-_")),
        s("google_oauth", "client secret ", "GOCSPX-" + _r(rng, 28)),
        s("jwt", "Cookie: session=", "eyJ" + _r(rng, 30) + ".eyJ" + _r(rng, 40) + "." + _r(rng, 43)),
        s("npm", "//registry.npmjs.org/:_authToken=", "npm_" + _r(rng, 36)),
        s("pypi", "password = ", "pypi-AgEIcHlwaS5vcmc" + _r(rng, 60)),
        s("sendgrid", "", f"SG.{_r(rng, 22)}.{_r(rng, 43)}"),
        s("twilio", "twilio api key ", "SK" + _r(rng, 32, hexd)),
        s("mailchimp", "mc key ", _r(rng, 32, hexd) + "-us14"),
        s("telegram", "bot ", f"{rng.randint(10**8, 10**9)}:AA{_r(rng, 33)}"),
        s("square", "", "sq0atp-" + _r(rng, 22)),
        s("shopify", "", "shpat_" + _r(rng, 32, hexd)),
        s("huggingface", "HF_TOKEN=", "hf_" + _r(rng, 34)),
        s("digitalocean", "", "dop_v1_" + _r(rng, 64, hexd)),
        s("databricks", "", "dapi" + _r(rng, 32, hexd)),
        s("linear", "", "lin_api_" + _r(rng, 40)),
        s("doppler", "", "dp.pt." + _r(rng, 43)),
        s("age", "", "AGE-SECRET-KEY-1" + _r(rng, 58, up)),
        s("azure_storage", "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=", _r(rng, 86, b64) + "==", ";"),
        s("vault", "VAULT_TOKEN=", "hvs." + _r(rng, 90)),
        s("newrelic", "", "NRAK-" + _r(rng, 27, up)),
        s("bearer", "curl -H 'Authorization: Bearer ", _r(rng, 40), "' https://api.example.com"),
        s("basic_auth", "Authorization: Basic ", base64.b64encode(_r(rng, 20).encode()).decode()),
        s("url_password", "DATABASE_URL=postgres://app:", _r(rng, 16), "@db.internal:5432/prod"),
        s("password_assign", "password: ", _r(rng, 14)),
        s("private_key", "", "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(_r(rng, 64, b64) for _ in range(4))
          + "\n-----END RSA PRIVATE KEY-----"),
        s("ssh_private_key", "", "-----BEGIN OPENSSH PRIVATE KEY-----\n" + _r(rng, 70, b64) + "\n-----END OPENSSH PRIVATE KEY-----"),
        s("ip_private", "ssh deploy@", f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
        s("ip_public", "resolved to ", f"93.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
        s("email", "contact ", _r(rng, 8, string.ascii_lowercase) + "@example.org", " for access"),
        s("home_path", "cd ", "/home/" + _r(rng, 7, string.ascii_lowercase), "/gt/webapp"),
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
