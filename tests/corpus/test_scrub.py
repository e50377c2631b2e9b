import json

from gt_ext.corpus.planted import secrets_and_decoys
from gt_ext.corpus.scrub import Scrubber, scrub_text


def test_every_planted_secret_is_found_with_certainty_and_replaced():
    secrets, _ = secrets_and_decoys(1)
    assert len(secrets) >= 30
    s = Scrubber(extra_usernames=())
    for kind, line, _value in secrets:
        r = s.scrub(line)
        assert r.findings, f"{kind}: nothing found"
        assert not r.quarantine, f"{kind}: should be certain, got {r.findings}"
        assert r.text != line
        assert "<" in r.text and ">" in r.text, kind


def test_decoys_are_left_alone():
    _, decoys = secrets_and_decoys(1)
    s = Scrubber(extra_usernames=())
    for kind, line in decoys:
        r = s.scrub(line)
        assert r.findings == [], f"{kind}: flagged {[f.type for f in r.findings]}"
        assert r.text == line


def test_placeholders_are_typed():
    r = scrub_text("key AKIAABCDEFGHIJKLMNOP at 10.0.0.7 from /home/zed/x mail a@b.io")
    assert "<SECRET:aws_access_key>" in r.text
    assert "<IP>" in r.text and "<PATH:home>/x" in r.text and "<EMAIL>" in r.text
    assert "127.0.0.1" in scrub_text("bind 127.0.0.1:8080").text  # loopback is kept on purpose


def test_unexplained_high_entropy_string_quarantines_without_replacing():
    line = 'config = "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBhYmNkZWZnaGlqaw"'
    r = scrub_text(line)
    assert r.quarantine
    assert any(f.confidence == "uncertain" for f in r.findings)


def test_findings_never_carry_the_secret_value():
    tok = "ghp_" + "a1B2" * 9
    r = scrub_text(f"token {tok}")
    assert tok not in json.dumps([f.to_dict() for f in r.findings])
    assert tok not in r.text


def test_spans_refer_to_the_original_text():
    text = "a 10.1.1.1 b AKIAABCDEFGHIJKLMNOP c"
    for f in scrub_text(text).findings:
        assert text[f.start:f.end] in ("10.1.1.1", "AKIAABCDEFGHIJKLMNOP")


def test_username_of_home_path_is_scrubbed_elsewhere_too():
    r = Scrubber(extra_usernames=()).scrub("ls /home/quentin/gt\nwhoami -> quentin")
    assert "quentin" not in r.text


def test_scrubbing_is_idempotent():
    secrets, _ = secrets_and_decoys(2)
    s = Scrubber(extra_usernames=())
    for _kind, line, _value in secrets:
        once = s.scrub(line).text
        assert s.scrub(once).text == once
        assert s.scrub(once).findings == []


def test_rescan_quarantines_what_new_detectors_find(tmp_path):
    """Examples stored under other detectors are re-scrubbed: new hits go to quarantine (reason
    names the type, never the value); an unchanged scrubber does nothing unless forced."""
    from gt_ext.cli import main
    from gt_ext.corpus.ingest import Ingestor, Source, Tags
    from gt_ext.corpus.rescan import META_KEY, detectors_changed, rescan
    from gt_ext.corpus.scrub import Scrubber, detectors_fingerprint
    from gt_ext.corpus.store import Store

    class Blind(Scrubber):  # what an older release's scrubber missed
        def scan(self, text):
            return []

    key = "AKIA" + "QWERTYUIOPASDFGH"
    with Store.open(tmp_path / "c") as st:
        ing = Ingestor(st, scrubber=Blind(extra_usernames=()))
        with st.tx():
            ing.ingest([{"role": "user", "content": "Configure the uploader for the nightly sync job."},
                        {"role": "assistant", "content": f"Set AWS_ACCESS_KEY_ID={key} in the job's env and ran it."}],
                       Tags(role="crew", outcome="success"), Source("curated", "a", "a"))
            ing.ingest([{"role": "user", "content": "Which polecats are idle on the demo rig right now?"},
                        {"role": "assistant", "content": "Listing them with gt polecat list demo; two are idle."}],
                       Tags(role="witness", outcome="success"), Source("curated", "b", "b"))
        assert st.count(status="active") == 2
        assert not detectors_changed(st)  # the store was scrubbed with these detectors' fingerprint
        assert rescan(st)["skipped"]
        with st.tx():
            st.set_meta(META_KEY, "detectors-of-an-older-release")
        assert detectors_changed(st)
    assert main(["corpus", "--store", str(tmp_path / "c"), "rescan", "--json"]) == 0
    with Store.open(tmp_path / "c") as st:
        [q] = st.query(status="quarantined")
        assert q.role == "crew" and "aws_access_key" in q.reason and key not in q.reason
        assert key not in json.dumps(q.messages) and "<SEALED:aws_access_key:0>" in json.dumps(q.messages)
        assert st.count(status="active") == 1 and not detectors_changed(st)
        assert st.get_meta(META_KEY) == detectors_fingerprint(Scrubber())
        rep = rescan(st, force=True)
        assert rep["rescanned"] == 1 and rep["quarantined"] == 0
    # Released, a certain hit goes back as its placeholder, never as the value.
    assert main(["corpus", "--store", str(tmp_path / "c"), "quarantine", "release", q.id]) == 0
    with Store.open(tmp_path / "c") as st:
        text = json.dumps(st.get(q.id).messages)
        assert key not in text and "AWS_ACCESS_KEY_ID=<SECRET:aws_access_key>" in text


# --- issue #20: credentials by name and layout, unquoted tokens ---------------------------------
import pytest  # noqa: E402

from gt_ext.corpus.planted import credential_families, decoy_families  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_credential_family_leaves_no_value(seed):
    s = Scrubber(extra_usernames=())
    fams = credential_families(seed)
    assert {f for f, _t, _v in fams} >= {"shell_log_token", "env_assignment", "docker_config", "npmrc", "pypirc", "netrc",
                                          "git_credentials", "kubeconfig", "cloud_cli", "dotenv", "private_key", "jwt"}
    for fam, text, values in fams:
        r = s.scrub(text)
        assert not r.quarantine, f"{fam}: certain formats must be replaced, not quarantined: {r.findings}"
        for v in values:
            assert v not in r.text, f"{fam}: {v[:6]}... survived:\n{r.text}"
        assert s.scrub(r.text).text == r.text  # idempotent


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decoy_families_stay_intact(seed):
    s = Scrubber(extra_usernames=())
    for fam, text in decoy_families(seed):
        r = s.scrub(text)
        assert r.findings == [], f"{fam}: flagged {[(f.type, text[f.start:f.end]) for f in r.findings]}"
        assert r.text == text


def test_the_reported_leaks_are_replaced():
    """The two lines from the issue that were stored active and exported."""
    tok = "Qm8xT2vR9pL4kW7nZ1bY5cH3jD6fG0sAe2uI7oK9x3"  # 42 random characters, no quotes around it
    assert len(tok) == 42
    r = scrub_text(f"2026-12-04 10:00:01 INFO connected with {tok} to the queue")
    assert tok not in r.text and "<SECRET:high_entropy_token>" in r.text and not r.quarantine
    r = scrub_text("$ export MY_SECRET=value\n$ NAME=alice ./run.sh")
    assert "MY_SECRET=<SECRET:" in r.text and "value" not in r.text
    assert "NAME=alice" in r.text  # a name that says nothing secret keeps its value


def test_code_and_prose_near_secret_words_are_not_findings():
    s = Scrubber(extra_usernames=())
    for line in ("api = create_app(gen, token=token, max_batch=4)", "items.sort(key=lambda r: r.id)",
                 "key: str", "token = get_token(session)", "the password reset mail goes out hourly",
                 'META_KEY = "scrub_detectors"', '{"pass": "merge", "fail": "fix-needed"}',
                 "docker login --password-stdin ghcr.io", "gt-ext train --max-steps 200 --token-budget 4000"):
        assert s.scan(line) == [], line


def test_sample_town_lines_are_not_flagged_by_the_new_rules():
    from gt_ext.corpus import credentials
    from gt_ext.corpus.sample_town import generate

    text = "\n".join(m["content"] for sess in generate(0, witness=10, per_role=3) for m in sess.messages)
    assert list(credentials.find(text)) == []


def test_base64_pem_blocks_key_is_secret_certificate_is_not():
    import base64

    key = base64.b64encode(b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4\n-----END RSA PRIVATE KEY-----\n").decode()
    cert = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIDBTCCAe2gAwIBAgIQ\n-----END CERTIFICATE-----\n").decode()
    r = scrub_text(f"blob {key}\nca {cert}")
    assert key not in r.text and cert in r.text
