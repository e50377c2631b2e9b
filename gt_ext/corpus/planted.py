"""A planted set of credentials (at least 30 formats) and look-alike decoys, shared by the scrub
tests and bench/scrub.py. Values are synthetic: built from a seeded RNG, valid in shape only."""

from __future__ import annotations

import base64
import hashlib
import json
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


# --- credentials by name and file layout (issue #20): one family per place developers leak them ---
def _tok(rng: random.Random, n: int, alphabet: str = A) -> str:
    """A random token that has a digit, an upper and a lower case letter (what real ones have)."""
    while True:
        t = _r(rng, n, alphabet)
        if any(c.isdigit() for c in t) and any(c.isupper() for c in t) and any(c.islower() for c in t):
            return t


def _pem_b64(kind: str, rng: random.Random) -> str:
    body = "\n".join(_r(rng, 64, A + "+/") for _ in range(3))
    return base64.b64encode(f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n".encode()).decode()


def credential_families(seed: int = 0) -> list[tuple[str, str, list[str]]]:
    """[(family, text, values)]: shell/log lines and config files as developers `cat` them, each
    holding the credential `values` (all must leave a scrubbed copy). Synthetic values."""
    rng = random.Random(seed)
    t = lambda n=40: _tok(rng, n)  # noqa: E731
    pw = lambda: _r(rng, 6, string.ascii_lowercase) + str(rng.randint(10, 99)) + rng.choice("!#%+")  # noqa: E731
    out: list[tuple[str, str, list[str]]] = []

    def fam(family: str, text: str, *values: str) -> None:
        out.append((family, text, list(values)))

    v = [t(42), t(32), t(48), t(36)]
    fam("shell_log_token", f"2026-12-04T10:02:11Z INFO  worker ready, session key {v[0]} (expires in 1h)", v[0])
    fam("shell_log_token", f"$ curl -s -H 'X-Auth: {v[1]}' https://api.internal.example/v2/jobs", v[1])
    fam("shell_log_token", f"$ ./deploy.sh --env prod {v[2]}\ndeploying 3 services...", v[2])
    fam("shell_log_token", f"GET /callback?code=ok&state={v[3]} 200 12ms", v[3])
    v = [pw(), t(24), pw(), t(30), pw()]
    fam("env_assignment", f"$ export MY_SECRET={v[0]}", v[0])
    fam("env_assignment", f"export STRIPE_API_KEY=\"{v[1]}\"", v[1])
    fam("env_assignment", f"DB_PASSWORD='{v[2]}' ./manage.py migrate", v[2])
    fam("env_assignment", f"docker run -e SERVICE_TOKEN={v[3]} -p 8080:8080 app:latest", v[3])
    fam("env_assignment", f"$ SMTP_PASS={v[4]} node mailer.js", v[4])
    auth = base64.b64encode(f"deploy:{t(20)}".encode()).decode()
    ident = t(40)
    fam("docker_config", json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth},
                                               "ghcr.io": {"auth": "", "identitytoken": ident}},
                                     "credsStore": "desktop", "currentContext": "default"}, indent=2), auth, ident)
    v = [t(36), base64.b64encode(f"ci:{pw()}".encode()).decode(), base64.b64encode(pw().encode()).decode()]
    fam("npmrc", f"registry=https://registry.npmjs.org/\n//npm.pkg.example.com/:_authToken={v[0]}\n"
                 f"//legacy.example.com/:_auth={v[1]}\n//legacy.example.com/:_password={v[2]}\nalways-auth=true", *v)
    v = [pw(), pw()]
    fam("pypirc", f"[distutils]\nindex-servers =\n    pypi\n    private\n\n[pypi]\nusername = __token__\npassword = {v[0]}\n\n"
                  f"[private]\nrepository = https://pypi.example.com/\nusername = builder\npassword: {v[1]}", *v)
    v = [pw(), t(40), pw()]
    fam("netrc", f"machine api.heroku.com login ops@example.com password {v[0]}\n"
                 f"machine github.com\n  login alice\n  password {v[1]}\ndefault login anonymous password {v[2]}", *v)
    v = [pw(), t(40), pw()]
    fam("git_credentials", f"https://alice:{v[0]}@git.example.com\nhttps://x-access-token:{v[1]}@github.com\n"
                           f"$ git clone https://bob:{v[2]}@gitlab.example.org/team/app.git", *v)
    key = _pem_b64("RSA PRIVATE KEY", rng)
    tok = f"{_r(rng, 6, string.ascii_lowercase + string.digits)}.{_r(rng, 16, string.ascii_lowercase + string.digits)}"
    refresh = t(44)
    fam("kubeconfig", "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
                      f"    certificate-authority-data: {_pem_b64('CERTIFICATE', rng)}\n    server: https://k8s.example:6443\n"
                      "  name: prod\nusers:\n- name: admin\n  user:\n"
                      f"    client-certificate-data: {_pem_b64('CERTIFICATE', rng)}\n    client-key-data: {key}\n"
                      f"- name: bootstrap\n  user:\n    token: {tok}\n- name: oidc\n  user:\n    auth-provider:\n"
                      f"      config:\n        refresh-token: {refresh}\n        idp-issuer-url: https://idp.example", key, tok, refresh)
    v = [_r(rng, 40, A + "+/"), t(60)]
    fam("cloud_cli", f"[default]\naws_access_key_id = AKIA{_r(rng, 16, string.ascii_uppercase + string.digits)}\n"
                     f"aws_secret_access_key = {v[0]}\naws_session_token = {v[1]}\nregion = eu-west-1", *v)
    v = [t(24), "1//0" + t(60)]
    fam("cloud_cli", json.dumps({"client_id": f"{rng.randint(10**11, 10**12)}-{_r(rng, 32, string.ascii_lowercase)}.apps.googleusercontent.com",
                                 "client_secret": v[0], "refresh_token": v[1], "type": "authorized_user"}, indent=1), *v)
    v = ["0.A" + t(80), t(40)]
    fam("cloud_cli", json.dumps({"RefreshToken": {"x": {"credential_type": "RefreshToken", "secret": v[0],
                                                         "home_account_id": str(uuid.UUID(int=rng.getrandbits(128)))}},
                                 "AppMetadata": {"client_secret": v[1]}}, indent=1), *v)
    v = [t(40), pw(), t(64), pw()]
    fam("dotenv", f"APP_ENV=production\nPORT=3000\nDEBUG=false\nSECRET_KEY_BASE={v[0]}\nREDIS_PASSWORD={v[1]}\n"
                  f"JWT_SIGNING_KEY=\"{v[2]}\"\nADMIN_PASS='{v[3]}'\nLOG_LEVEL=info\nTOKEN_TTL=3600", *v)
    body = "\n".join(_r(rng, 64, A + "+/") for _ in range(5))
    fam("private_key", f"$ cat ~/.ssh/id_ed25519\n-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----",
        body.splitlines()[2])
    body = "\n".join(_r(rng, 64, A + "+/") for _ in range(4))
    fam("private_key", f"$ cat tls/server.key\n-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----",
        body.splitlines()[1])
    esc = "\\n".join(_r(rng, 64, A + "+/") for _ in range(3))
    fam("private_key", '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\n' + esc
        + '\\n-----END PRIVATE KEY-----\\n"}', esc.split("\\n")[1])
    lines = [_r(rng, 64, A + "+/") for _ in range(2)]
    fam("private_key", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: deploy\nPublic-Lines: 1\n"
                       f"AAAAC3NzaC1lZDI1NTE5AAAAI{_r(rng, 43)}\nPrivate-Lines: 2\n" + "\n".join(lines)
                       + f"\nPrivate-MAC: {_r(rng, 64, '0123456789abcdef')}", *lines)

    def jwt() -> str:
        head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
        body = base64.urlsafe_b64encode(json.dumps({"sub": _r(rng, 8), "exp": rng.randint(10**9, 2 * 10**9)}).encode())
        return f"{head}.{body.decode().rstrip('=')}.{_r(rng, 43, A + '-_')}"
    v = [jwt(), jwt()]
    fam("jwt", f"Cookie: sid={v[0]}; theme=dark", v[0])
    fam("jwt", f"2026-12-04 DEBUG auth ok: {v[1]}", v[1])
    return out


def decoy_families(seed: int = 0) -> list[tuple[str, str]]:
    """[(family, text)]: look-alikes a scrubber must leave exactly as they are."""
    rng = random.Random(seed)
    sha1 = lambda: hashlib.sha1(str(rng.random()).encode()).hexdigest()  # noqa: E731
    sha256 = lambda: hashlib.sha256(str(rng.random()).encode()).hexdigest()  # noqa: E731
    uid = lambda: str(uuid.UUID(int=rng.getrandbits(128)))  # noqa: E731
    out = [
        ("commit_id", f"commit {sha1()}\nMerge: {sha1()[:7]} {sha1()[:7]}"),
        ("commit_id", f"$ git log --oneline -2\n{sha1()[:7]} fix the scrubber\n{sha1()[:10]} add tests"),
        ("commit_id", f"HEAD is now at {sha1()[:12]} gate: deploy needs a passing run"),
        ("hash", f"sha256:{sha256()}  model.safetensors"),
        ("hash", f"{hashlib.md5(str(rng.random()).encode()).hexdigest()}  dist/app.tar.gz"),
        ("hash", f"image: registry.example.com/app@sha256:{sha256()}"),
        ("hash", f"h1:{base64.b64encode(hashlib.sha256(str(rng.random()).encode()).digest()).decode()} go.sum"),
        ("hash", f"integrity sha512-{base64.b64encode(hashlib.sha512(str(rng.random()).encode()).digest()).decode()}"),
        ("uuid", f"session_id: {uid()}\nrequest {uid()} finished in 12 ms"),
        ("uuid", f"GT_SESSION_ID={uid()} gt prime"),
        ("placeholder", "export GITHUB_TOKEN=$GH_TOKEN\nAPI_KEY=<your-api-key>\nSECRET=changeme"),
        ("placeholder", 'password: ${DB_PASSWORD}\ntoken: "{{ .Values.apiToken }}"\nclient_secret: xxxxxxxxxxxx'),
        ("placeholder", '{"auths": {"ghcr.io": {"auth": ""}}, "credsStore": "desktop"}'),
        ("placeholder", "password: ********\nNPM_TOKEN=%NPM_TOKEN%\n//registry.npmjs.org/:_authToken=${NPM_TOKEN}"),
        ("placeholder", "api_key = os.environ[\"API_KEY\"]\ntoken = get_token(session)\nsecret = settings.SECRET_KEY"),
        ("config_value", "TOKEN_TTL=3600\nKEY_PATH=/etc/ssl/private/server.key\nSSH_AUTH_SOCK=/tmp/ssh-XXXX/agent.1234\n"
                         "MAX_NEW_TOKENS=256\nTOKENIZERS_PARALLELISM=false\nPASSWORD_MIN_LENGTH=12"),
        ("config_value", "$ docker login --password-stdin ghcr.io < token.txt\n$ gt-ext train --max-steps 200 --token-budget 4000"),
        ("config_value", "password reset emails go out hourly\nThe token is refreshed by the deacon."),
        ("identifier", "test_scrubbing_is_idempotent_for_every_family PASSED\nAbstractSingletonProxyFactoryBean2 loaded"),
        ("identifier", "SmolLM2-135M-Instruct x86_64-unknown-linux-gnu python3.11-site-packages node0-inference-witness-v2"),
        ("identifier", "/work/main/gt_ext/corpus/credentials.py:42 /usr/lib/python3.11/site-packages/torch/nn/modules"),
        ("kube_public", "clusters:\n- cluster:\n    certificate-authority-data: " + _pem_b64("CERTIFICATE", rng)
         + "\n    server: https://k8s.example:6443"),
        ("data_uri", f'<img src="data:image/png;base64,{base64.b64encode(bytes(rng.getrandbits(8) for _ in range(48))).decode()}">'),
    ]
    return out
