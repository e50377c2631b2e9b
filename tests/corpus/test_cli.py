import json

import pytest

from gt_ext.cli import main


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GT_EXT_CORPUS", str(tmp_path / "corpus"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "corpus"


def test_scrub_file_and_json(tmp_path, capsys, store):
    f = tmp_path / "t.txt"
    f.write_text("key AKIAABCDEFGHIJKLMNOP\n")
    assert main(["corpus", "scrub", str(f)]) == 0
    assert capsys.readouterr().out == "key <SECRET:aws_access_key>\n"
    assert main(["corpus", "scrub", str(f), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["quarantine"] is False and data["findings"][0]["type"] == "aws_access_key"
    assert "AKIAABCDEFGHIJKLMNOP" not in json.dumps(data)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, store):
    assert main(["corpus", "scrub", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.txt" in err and err.count("\n") == 1
    assert main(["corpus", "add", str(tmp_path / "nope.md"), "--role", "witness"]) == 2
    assert main(["corpus", "add", str(tmp_path / "nope.md"), "--role", "wizard"]) == 2
    assert "unknown role" in capsys.readouterr().err
    assert main(["corpus", "show", "deadbeef"]) == 2


def test_add_list_show_stats_export(tmp_path, capsys, store):
    md = tmp_path / "ex.md"
    md.write_text("## User\nPatrol the demo rig.\n## Assistant\nAll polecats are working; nothing to do this cycle.\n")
    assert main(["corpus", "add", str(md), "--role", "witness", "--task", "patrol", "--outcome", "success"]) == 0
    capsys.readouterr()
    assert main(["corpus", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["role"] == "witness" and row["label"] == "good"
    assert main(["corpus", "show", row["id"][:10], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages"][0]["role"] == "system"
    assert main(["corpus", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 1
    assert main(["corpus", "export", "--out", str(tmp_path / "exp"), "--val-pct", "0", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["counts"]["sft"]["witness"]["patrol"]["train"] == 1
    # A second export into the same folder is refused unless asked; --if-missing keeps the first.
    assert main(["corpus", "export", "--out", str(tmp_path / "exp")]) == 2
    assert "already holds an export" in capsys.readouterr().err
    assert main(["corpus", "export", "--out", str(tmp_path / "exp"), "--if-missing", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corpus_hash"] == m["corpus_hash"]


def test_quarantine_review_flow(tmp_path, capsys, store):
    md = tmp_path / "q.md"
    md.write_text('## User\nSet the config.\n## Assistant\nI set blob = "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBhYmNkZWZnaGlqaw" as asked.\n')
    assert main(["corpus", "add", str(md), "--role", "crew"]) == 0
    capsys.readouterr()
    assert main(["corpus", "quarantine", "list", "--json"]) == 0
    [q] = json.loads(capsys.readouterr().out)
    assert main(["corpus", "quarantine", "show", q["id"], "--json"]) == 0
    shown = json.dumps(json.loads(capsys.readouterr().out)["messages"])
    assert "Zm9vYmFy" not in shown and "<SEALED:high_entropy_string:0>" in shown
    assert main(["corpus", "quarantine", "show", q["id"], "--reveal", "--json"]) == 0
    assert "Zm9vYmFy" in json.dumps(json.loads(capsys.readouterr().out)["messages"])
    assert main(["corpus", "quarantine", "release", q["id"]]) == 0
    capsys.readouterr()
    assert main(["corpus", "list", "--json"]) == 0
    [released] = json.loads(capsys.readouterr().out)
    from gt_ext.corpus.store import Store

    with Store.open(store) as st:  # judged harmless: the value is back in the example, the seal gone
        assert "Zm9vYmFy" in json.dumps(st.get(released["id"]).messages) and st.sealed(released["id"]) == {}
    assert main(["corpus", "quarantine", "drop", q["id"]]) == 2  # no longer in quarantine


def test_audit_counts_detectors(tmp_path, capsys, store):
    md = tmp_path / "a.md"
    md.write_text("## User\nConnect to the db.\n## Assistant\nConnected to 10.2.3.4 with AKIAABCDEFGHIJKLMNOP and it works.\n")
    assert main(["corpus", "add", str(md), "--role", "crew"]) == 0
    capsys.readouterr()
    assert main(["corpus", "audit", "--json", "--sample", "1"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["detectors"]["regex:aws_access_key"]["certain"] == 1 and a["detectors"]["regex:ip"]["certain"] == 1
    assert len(a["sample"]) == 1


def test_process_artifacts_with_and_without_gt_prime(tmp_path, capsys, store, monkeypatch):
    from gt_ext.gastown import binaries

    town = tmp_path / "town"
    (town / "mayor").mkdir(parents=True)
    (town / "mayor" / "town.json").write_text("{}")
    (town / "CLAUDE.md").write_text("# Town rules\nFile a bead for every change; never push to main by hand.\n")
    assert main(["corpus", "--town", str(town), "process", "--artifacts", "--no-prime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artifacts"] == {"new": 1}
    # With prime (the default) and no real gt on this machine, the roles are counted as skipped.
    monkeypatch.setattr(binaries, "find_gt", lambda required=True: None)
    assert main(["corpus", "--town", str(town), "process", "--artifacts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artifacts"] == {"unchanged": 1, "prime-skipped": 4}


# --- issue #20: every bad input is one line naming what and where, exit 2, nothing written ---------
def _one_line(capsys, *names):
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: "), cap.err
    for n in names:
        assert n in cap.err, (n, cap.err)
    return cap.err


def _md(path, role=None, extra=""):
    front = f"---\nrole: {role}\n---\n" if role else ""
    path.write_text(f"{front}## User\nFile a bead for the login bug{extra}.\n"
                    f"## Assistant\nFiling it with bd create so it is tracked properly{extra}.\n")
    return path


def test_files_where_folders_are_expected_and_back(tmp_path, capsys, store):
    d = tmp_path / "somedir"
    d.mkdir()
    assert main(["corpus", "add", str(d), "--role", "crew"]) == 2
    _one_line(capsys, str(d), "is a folder")
    assert main(["corpus", "scrub", str(d)]) == 2
    _one_line(capsys, str(d), "is a folder")
    f = tmp_path / "notadir"
    f.write_text("keep me")
    assert main(["corpus", "export", "--out", str(f)]) == 2
    _one_line(capsys, str(f), "is a file")
    assert f.read_text() == "keep me"
    assert main(["corpus", "stats", "--json"]) == 0 and json.loads(capsys.readouterr().out)["total"] == 0


@pytest.mark.parametrize(("argv", "names"), [
    (["corpus", "audit", "--sample", "-1"], ["--sample", "greater than or equal to 0"]),
    (["corpus", "list", "--status", "bogus"], ["--status", "bogus"]),
    (["corpus", "list", "--role", "wizard"], ["wizard"]),
    (["corpus", "list", "--task", "nosuch-task"], ["nosuch-task"]),
    (["corpus", "list", "--rig", "nosuch"], ["--rig", "nosuch"]),
    (["corpus", "list", "--limit", "0"], ["--limit"]),
])
def test_filters_validate_their_values(argv, names, capsys, store):
    assert main(argv) == 2
    _one_line(capsys, *names)


def test_export_for_an_unknown_rig_is_refused(tmp_path, capsys, store):
    assert main(["corpus", "add", str(_md(tmp_path / "a.md")), "--role", "crew", "--rig", "alpha"]) == 0
    capsys.readouterr()
    assert main(["corpus", "export", "--rig", "nosuch", "--out", str(tmp_path / "exp")]) == 2
    _one_line(capsys, "--rig 'nosuch'", "alpha")
    assert not (tmp_path / "exp").exists()
    assert main(["corpus", "export", "--rig", "alpha", "--out", str(tmp_path / "exp")]) == 0
    assert main(["corpus", "list", "--rig", "alpha", "--json"]) == 0


def test_add_without_a_role_refuses_or_takes_the_files_own(tmp_path, capsys, store):
    bare, tagged = _md(tmp_path / "bare.md"), _md(tmp_path / "tagged.md", role="witness", extra=" soon")
    assert main(["corpus", "add", str(tagged), str(bare)]) == 2  # one without a role: nothing is added
    _one_line(capsys, str(bare), "--role")
    assert main(["corpus", "stats", "--json"]) == 0 and json.loads(capsys.readouterr().out)["total"] == 0
    assert main(["corpus", "add", str(tagged)]) == 0
    capsys.readouterr()
    assert main(["corpus", "list", "--json"]) == 0
    assert [r["role"] for r in json.loads(capsys.readouterr().out)] == ["witness"]
    bad = _md(tmp_path / "bad.md", role="wizard")
    assert main(["corpus", "add", str(bad)]) == 2
    _one_line(capsys, str(bad), "wizard")


def test_add_infers_the_role_of_a_transcript_from_its_work_dir(tmp_path, capsys, store):
    from tests.corpus.helpers import make_town_dirs, write_transcript

    town = make_town_dirs(tmp_path / "town")
    t = write_transcript(tmp_path / "projects", "sess-9", str(town / "demo" / "witness"), "Patrol the demo rig.",
                         [("Checking the polecats.", "gt polecat list demo", "nux: working")])
    assert main(["corpus", "--town", str(town), "add", str(t)]) == 0
    capsys.readouterr()
    assert main(["corpus", "list", "--json"]) == 0
    assert [r["role"] for r in json.loads(capsys.readouterr().out)] == ["witness"]


def test_add_says_what_happened_to_a_near_duplicate(tmp_path, capsys, store):
    words = " ".join(f"step{i}" for i in range(200))
    a = _md(tmp_path / "a.md", extra=" " + words)
    b = _md(tmp_path / "b.md", extra=" " + words + " again")
    assert main(["corpus", "add", str(a), "--role", "crew"]) == 0
    assert "added 1 of 1 example(s)" in capsys.readouterr().out
    assert main(["corpus", "add", str(b), "--role", "crew"]) == 0
    out = capsys.readouterr().out
    assert "added 0 of 1 example(s) to the corpus (1 rejected)" in out and "near-duplicate of" in out, out
    assert str(b) in out
    assert main(["corpus", "add", str(a), "--role", "crew"]) == 0
    assert "not stored: this file was added before" in capsys.readouterr().out


def test_add_help_shows_the_accepted_formats(capsys, store):
    assert main(["corpus", "add", "--help"]) == 0
    out = capsys.readouterr().out
    for fmt in (".md:", ".json:", ".jsonl", "## User", "role: witness"):
        assert fmt in out, fmt
