from gt_ext.corpus import gates
from gt_ext.corpus.format import render_tool_call


def _ex(*cmds: str, text: str = "Doing the work now as the bead asks.") -> list[dict]:
    return [{"role": "user", "content": "do it"},
            {"role": "assistant", "content": text + "\n" + "\n".join(render_tool_call("Bash", {"command": c}) for c in cmds)}]


def test_violations():
    assert gates.violations(_ex("pkill -f claude")) == ["pkill"]
    assert gates.violations(_ex("git push --force origin main")) == ["force-push"]
    assert gates.violations(_ex("git push -f")) == ["force-push"]
    assert gates.violations(_ex("git push --force-with-lease")) == []
    assert gates.violations(_ex("git commit -m x --no-verify")) == ["skip-hooks"]
    assert gates.violations(_ex("tmux kill-session -t dm-nux")) == ["raw-tmux"]
    assert gates.violations(_ex("sqlite3 .beads/beads.db 'update issues'")) == ["raw-beads-db"]
    assert gates.violations(_ex("gt nudge demo/nux 'run your hook'", "bd close dm-1")) == []
    # Only what the agent ran counts: talking about pkill is not running it.
    assert gates.violations(_ex(text="Never use pkill here; gt handles sessions.")) == []


def test_size_and_garbage():
    assert gates.size_problem([{"role": "user", "content": "x"}, {"role": "assistant", "content": "ok"}]).startswith("too short")
    assert gates.size_problem(_ex()) is None
    noise = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x00\x01\x02" * 40}]
    assert gates.garbage_problem(noise).startswith("garbage")
    rep = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\n".join(["retrying"] * 30)}]
    assert "repeated" in gates.garbage_problem(rep)
    assert gates.garbage_problem(_ex("gt hook")) is None


def test_minhash_near_duplicates():
    base = " ".join(f"word{i}" for i in range(200))
    a = [{"role": "assistant", "content": base}]
    b = [{"role": "assistant", "content": base + " extra"}]
    c = [{"role": "assistant", "content": " ".join(f"other{i}" for i in range(200))}]
    sa, sb, sc = gates.minhash(a), gates.minhash(b), gates.minhash(c)
    assert gates.jaccard_estimate(sa, sb) >= gates.NEAR_DUP_THRESHOLD
    assert gates.jaccard_estimate(sa, sc) < 0.2
    assert set(gates.lsh_buckets(sa)) & set(gates.lsh_buckets(sb))


def test_batch_anomalies():
    corpus = {"n": 100, "mean_chars": 1000, "violation_rate": 0.05, "quarantine_rate": 0.01, "failure_rate": 0.3}
    ok = {"n": 10, "mean_chars": 1100, "violation_rate": 0.1, "quarantine_rate": 0.0, "failure_rate": 0.3}
    assert gates.batch_anomalies(ok, corpus) == []
    bad = dict(ok, violation_rate=0.9)
    assert gates.batch_anomalies(bad, corpus)
    assert gates.batch_anomalies(bad, dict(corpus, n=10)) == []  # too little corpus to judge
