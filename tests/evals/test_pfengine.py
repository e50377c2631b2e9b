"""Assertions beyond our in-process grader: cost and latency in process; everything else through the
real promptfoo against the project's own served model (gt_ext.evals.pfengine)."""

from __future__ import annotations

import json

import pytest

from gt_ext.evals import jsrun, pfengine, runner
from gt_ext.evals import suite as suite_mod

needs_node = pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")

COST_LATENCY = """
prompts: ["Answer: {{ q }}"]
defaultTest:
  assert:
    - {type: cost, threshold: 0.001}
    - {type: latency, threshold: 600000}
tests:
  - {description: one, vars: {q: alpha}, assert: [{type: contains, value: alpha}]}
  - {description: two, vars: {q: beta}, assert: [{type: not-cost, threshold: 0.001}]}
  - {description: three, vars: {q: gamma}, assert: [{type: latency}]}
"""


def _suite(tmp_path, text, name="s"):
    d = tmp_path / name
    d.mkdir()
    (d / "promptfooconfig.yaml").write_text(text)
    return d


def _echo(batch, params):
    return [m[-1]["content"] for m in batch]


def test_cost_and_latency_in_default_test_are_graded_not_skipped(tmp_path):
    """A suite written for API models (cost and latency on every test) gates a self-hosted model:
    its cost is 0 and its latency is measured."""
    res = runner.evaluate("base:tiny-llama", _suite(tmp_path, COST_LATENCY), generate=_echo, write=False)
    d = res.to_dict()
    one, two, three = d["tasks"]
    assert one["passed"] and one["cost"] == 0.0 and isinstance(one["latency_ms"], int) and one["engine"] == "ours"
    assert not two["passed"] and "Cost 0 is less than or equal to threshold 0.001" in two["reason"]
    assert three["skipped"] and three["reason"] == "skipped: latency assertion must have a threshold"
    assert d["skipped"] == ["three"] and d["run"]["engines"] == {"ours": 3}


@pytest.mark.integration
def test_priced_tokens_and_measured_latency_of_a_real_model(tmp_path):
    """With a configured price the cost is price x tokens of the real call; latency is the call's."""
    cfg = tmp_path / "price.yaml"
    cfg.write_text("cost_per_token: 0.5\n")
    suite = _suite(tmp_path, """
prompts: ["Answer: {{ q }}"]
tests:
  - {description: cheap, vars: {q: a}, assert: [{type: cost, threshold: 1.0}]}
  - {description: dear, vars: {q: b}, assert: [{type: not-cost, threshold: 1.0}]}
  - {description: slow, vars: {q: c}, assert: [{type: latency, threshold: 0}]}
""")
    (suite / "suite.yaml").write_text("max_new_tokens: 4\n")
    d = runner.evaluate("base:tiny-llama", suite, config=cfg, write=False).to_dict()
    cheap, dear, slow = d["tasks"]
    assert cheap["cost"] >= 0.5 * 5 and not cheap["passed"] and dear["passed"]  # prompt + answer tokens
    assert slow["latency_ms"] > 0 and not slow["passed"] and "is greater than threshold 0ms" in slow["reason"]


OTHERS = """
prompts: ["Answer: {{ q }}"]
providers:
  - id: openai:chat:gpt-4o-mini
    config:
      tools: [{type: function, function: {name: get_weather, parameters: {type: object, properties: {city: {type: string}}, required: [city]}}}]
defaultTest:
  assert:
    - {type: cost, threshold: 0.0001}
    - {type: latency, threshold: 600000}
tests:
  - {description: lev, vars: {q: fox}, assert: [{type: levenshtein, value: "the quick brown fax", threshold: 2}]}
  - {description: rouge, vars: {q: fox}, assert: [{type: rouge-n, value: "the quick brown fox", threshold: 0.9}]}
  - {description: bleu, vars: {q: fox}, assert: [{type: bleu, value: "an entirely different sentence here", threshold: 0.5}]}
  - {description: py, vars: {q: fox}, assert: [{type: python, value: "file://check.py"}]}
  - {description: words, vars: {q: fox}, assert: [{type: word-count, value: {min: 3, max: 5}}]}
  - {description: tools, vars: {q: weather}, assert: [{type: is-valid-openai-tools-call}]}
  - {description: ppl, vars: {q: fox}, assert: [{type: perplexity, threshold: 1000000000}]}
  - {description: rubric, vars: {q: fox}, assert: [{type: llm-rubric, value: "mentions a fox"}]}
  - {description: mod, vars: {q: fox}, assert: [{type: moderation}]}
  - {description: hook, vars: {q: fox}, assert: [{type: webhook, value: "http://127.0.0.1:9/never"}]}
  - {description: plain, vars: {q: fox}, assert: [{type: icontains, value: FOX}]}
"""
WEATHER = '<tool_call>{"name": "get_weather", "input": {"city": "Paris"}}</tool_call>'  # the project's tool-call format


def _model_and_grader(batch, params):
    """The model answers the fox question and calls the weather tool; as a grader (the base model
    grades by default, served by the same server) it passes what it is shown."""
    out = []
    for msgs in batch:
        text = " ".join(m["content"] for m in msgs)
        if "rubric" in text.lower():
            out.append(json.dumps({"reason": "the output mentions a fox", "pass": True, "score": 1}))
        elif "weather" in text:
            out.append(WEATHER)
        else:
            out.append("the quick brown fox")
    return out


@pytest.mark.integration
@needs_node
def test_real_promptfoo_grades_every_other_assertion_by_its_own_rules(tmp_path):
    if pfengine.promptfoo_binary() is None:
        pytest.skip("the real promptfoo is not installed (./install.sh or PROMPTFOO_BIN)")
    suite = _suite(tmp_path, OTHERS)
    (suite / "check.py").write_text("def get_assert(output, context):\n    return 'fox' in output\n")
    res = runner.evaluate("base:tiny-llama", suite, generate=_model_and_grader, write=False)
    d = res.to_dict()
    tasks = {t["id"]: t for t in d["tasks"]}
    for tid in ("lev", "rouge", "py", "words", "tools", "ppl", "rubric"):
        assert tasks[tid]["passed"] and tasks[tid]["engine"] == "promptfoo", (tid, tasks[tid]["reason"])
        assert tasks[tid]["cost"] == 0 and tasks[tid]["latency_ms"] is not None, tid
    assert not tasks["bleu"]["passed"] and not tasks["bleu"]["skipped"]
    assert tasks["plain"]["passed"] and tasks["plain"]["engine"] == "ours"  # core assertions stay in process
    assert tasks["mod"]["skipped"] and "assertion 'moderation': needs a moderation service" in tasks["mod"]["reason"]
    assert tasks["hook"]["skipped"] and tasks["hook"]["reason"].startswith("skipped: promptfoo could not grade it:"), (tasks["hook"]["reason"], tasks["hook"]["passed"])
    assert d["run"]["grader"] == "base:tiny-llama"
    assert d["skipped"] == ["mod", "hook"]
    # --engine ours grades what it can and says which assertion it leaves to promptfoo.
    d = runner.evaluate("base:tiny-llama", suite, generate=_model_and_grader, write=False, engine="ours").to_dict()
    tasks = {t["id"]: t for t in d["tasks"]}
    assert tasks["lev"]["skipped"] and "assertion 'levenshtein' is graded by the real promptfoo" in tasks["lev"]["reason"]
    assert tasks["plain"]["passed"]


def test_ungradable_and_routing_rules():
    st = suite_mod.load("builtin:boot")
    assert not any(pfengine.needs_promptfoo(t.test) for t in st.tasks)  # our suites stay in process
    from gt_ext.evals.promptfoo import TestCase

    def case(*types):
        return TestCase(0, "x", {}, [{"type": t} for t in types])

    assert pfengine.ungradable(case("contains", "not-moderation")) .startswith("assertion 'not-moderation'")
    assert "agent trajectory" in pfengine.ungradable(case("trajectory:tool-used"))
    assert pfengine.ungradable(case("rouge-n", "g-eval")) is None
    assert pfengine.needs_promptfoo(case("contains", "rouge-n")) and not pfengine.needs_promptfoo(case("cost", "regex"))
    assert pfengine.needs_grader(case("g-eval")) and not pfengine.needs_grader(case("rouge-n"))
