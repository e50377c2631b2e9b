import pytest
from hypothesis import given
from hypothesis import strategies as st

from gt_ext.corpus.format import (
    example_id,
    parse_tool_calls,
    render_tool_call,
    strip_tool_calls,
    validate_messages,
)
from gt_ext.errors import GtExtError


def test_render_matches_contract():
    assert render_tool_call("Bash", {"command": "bd list --json"}) == (
        '<tool_call>{"name": "Bash", "input": {"command": "bd list --json"}}</tool_call>'
    )


def test_parse_finds_calls_in_order_and_skips_broken():
    text = "look " + render_tool_call("Bash", {"command": "gt mail inbox"}) + " then <tool_call>{oops</tool_call> " + \
        render_tool_call("Read", {"path": "/x"})
    calls = parse_tool_calls(text)
    assert [c["name"] for c in calls] == ["Bash", "Read"]
    assert calls[0]["input"] == {"command": "gt mail inbox"}
    assert strip_tool_calls(text).startswith("look")


def test_closing_tag_inside_input_round_trips():
    inp = {"command": "echo '</tool_call>' && echo done"}
    assert parse_tool_calls(render_tool_call("Bash", inp)) == [{"name": "Bash", "input": inp}]


@given(st.text(min_size=1).filter(str.strip), st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.booleans())))
def test_round_trip_property(name, inp):
    assert parse_tool_calls(render_tool_call(name, inp)) == [{"name": name, "input": inp}]


def test_bad_inputs_raise():
    with pytest.raises(GtExtError):
        render_tool_call("", {})
    with pytest.raises(GtExtError):
        render_tool_call("Bash", ["not", "a", "dict"])
    with pytest.raises(GtExtError, match="no assistant"):
        validate_messages([{"role": "user", "content": "hi"}])
    with pytest.raises(GtExtError, match=r"messages\[0\]"):
        validate_messages([{"role": "robot", "content": "hi"}])


def test_example_id_stable_and_content_sensitive():
    a = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    b = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "z"}]
    assert example_id(a) == example_id([dict(m) for m in a])
    assert example_id(a) != example_id(b)
