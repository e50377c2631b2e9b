"""Reading promptfoo suites: templates, defaultTest merge, file refs, and one-line errors."""

from __future__ import annotations

import pytest

from gt_ext.errors import GtExtError
from gt_ext.evals import jsrun, promptfoo


def test_render_nunjucks_subset():
    t = "{% if role is defined %}[{{ role }}] {% endif %}{{ msg }}{% if missing is defined %}X{% endif %}"
    assert promptfoo.render(t, {"role": "witness", "msg": "hi"}) == "[witness] hi"
    assert promptfoo.render(t, {"msg": "hi"}) == "hi"
    # nunjucks prints like JavaScript: booleans lower-case, missing values empty, lists joined.
    assert promptfoo.render("{{ a }}|{{ b }}|{{ c }}|{{ d }}", {"a": True, "c": [1, 2], "d": None}) == "true||1,2|"
    assert promptfoo.render("{{ x | dump }}", {"x": {"k": 1}}) == '{"k": 1}'
    assert promptfoo.render("{% for s in xs %}{{ s }};{% endfor %}", {"xs": ["a", "b"]}) == "a;b;"


def test_render_error_is_one_line():
    with pytest.raises(GtExtError) as e:
        promptfoo.render("{% if x %}never closed", {})
    assert "\n" not in str(e.value) and "template error" in str(e.value)


def test_prompt_messages_chat_json_or_user_turn():
    assert promptfoo.prompt_messages("hello") == [{"role": "user", "content": "hello"}]
    chat = '[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]'
    assert promptfoo.prompt_messages(chat)[0] == {"role": "system", "content": "be brief"}


def _write(tmp_path, config: str, files: dict[str, str] | None = None):
    (tmp_path / "promptfooconfig.yaml").write_text(config)
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_default_test_merge_and_var_expansion(tmp_path):
    d = _write(tmp_path, """
prompts: ["Say {{ word }} to {{ who }}"]
defaultTest:
  vars: {who: nux, word: hi}
  options: {transform: "output.trim()"}
  metadata: {category: patrol}
  assert: [{type: is-json}]
tests:
  - vars: {word: [a, b]}
    assert: [{type: contains, value: x}]
  - description: own
    vars: {who: slit}
    metadata: {category: planning}
    options: {transform: "output"}
""")
    s = promptfoo.load_suite(d)
    assert [t.vars for t in s.tests] == [{"who": "nux", "word": "a"}, {"who": "nux", "word": "b"},
                                          {"who": "slit", "word": "hi"}]
    assert [a["type"] for a in s.tests[0].asserts] == ["is-json", "contains"]  # default's first
    assert s.tests[0].metadata == {"category": "patrol"} and s.tests[2].metadata == {"category": "planning"}
    assert s.tests[2].options["transform"] == "output" and s.tests[0].options["transform"] == "output.trim()"
    assert s.tests[2].name == "own" and s.tests[0].name == "test-1"


def test_file_refs_prompts_split_and_tests_glob(tmp_path):
    d = _write(tmp_path, "prompts: [file://p.txt]\ntests: file://t/*.yaml\n", {
        "p.txt": "first {{ a }}\n---\nsecond {{ a }}\n",
        "t/one.yaml": "- vars: {a: '1'}\n", "t/two.yaml": "- vars: {a: file://v.txt}\n", "v.txt": "from file"})
    s = promptfoo.load_suite(d)
    assert [p.raw for p in s.prompts] == ["first {{ a }}", "second {{ a }}"]
    assert [t.vars["a"] for t in s.tests] == ["1", "from file"]


@pytest.mark.parametrize("config,msg", [
    ("prompts: [file://nope.txt]\ntests: [{vars: {}}]\n", "prompt file not found"),
    ("prompts: [x]\n", "has no tests"),
    ("prompts: [x]\ntests: [{assert: [{value: 1}]}]\n", "without `type`"),
    ("prompts: [x]\ntests: file://t.csv\n", "CSV"),
    ("prompts: [x\n", "invalid YAML"),
])
def test_bad_suites_fail_with_one_line(tmp_path, config, msg):
    d = _write(tmp_path, config)
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(GtExtError) as e:
        promptfoo.load_suite(d)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_missing_suite_folder(tmp_path):
    with pytest.raises(GtExtError, match="no promptfooconfig.yaml"):
        promptfoo.load_suite(tmp_path)


def _test(asserts, **kw):
    return promptfoo.TestCase(index=0, description="t", vars=kw.pop("vars", {}), asserts=asserts, **kw)


def test_builtin_assertions_without_node():
    g = promptfoo.grade(_test([{"type": "contains", "value": "gt done"}, {"type": "not-regex", "value": "--force"}]),
                        "git push\ngt done")
    assert g.passed and g.score == 1.0
    g = promptfoo.grade(_test([{"type": "equals", "value": {"a": 1}}]), '{"a": 1}')
    assert g.passed  # object values compare as JSON
    g = promptfoo.grade(_test([{"type": "regex", "value": "(?<name>nux)"}]), "nux")
    assert g.passed  # JavaScript named groups
    g = promptfoo.grade(_test([{"type": "regex", "value": "(unclosed"}]), "x")
    assert not g.passed and "invalid regex" in g.reason
    g = promptfoo.grade(_test([{"type": "not-regex", "value": "(unclosed"}]), "x")
    assert not g.passed  # a broken pattern never passes, inverted or not


def test_unsupported_assertion_is_skipped_not_passed():
    g = promptfoo.grade(_test([{"type": "contains", "value": "a"}, {"type": "similar", "value": "a"}]), "a")
    assert g.skipped and not g.passed
    assert [a.skipped for a in g.assertions] == [False, True]


@pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")
def test_javascript_sees_output_and_context_vars():
    t = _test([{"type": "javascript", "value": "output.length === Number(context.vars.n) && context.prompt === 'P'"}],
              vars={"n": "3"})
    assert promptfoo.grade(t, "abc", prompt="P").passed
    assert not promptfoo.grade(t, "abcd", prompt="P").passed
    t = _test([{"type": "javascript", "value": "(() => { throw new Error('boom') })()"}])
    g = promptfoo.grade(t, "x")
    assert not g.passed and "boom" in g.reason


@pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")
def test_transform_error_fails_the_test():
    t = _test([{"type": "contains", "value": "x"}], options={"transform": "JSON.parse(output)"})
    g = promptfoo.grade(t, "not json")
    assert not g.passed and not g.skipped and "transform failed" in g.reason


def test_javascript_without_node_is_skipped(monkeypatch):
    monkeypatch.setattr(jsrun, "node_binary", lambda: None)
    g = promptfoo.grade(_test([{"type": "javascript", "value": "true"}]), "x")
    assert g.skipped and not g.passed and "node" in g.reason
