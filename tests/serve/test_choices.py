"""Constrained JSON string values (gt_ext.serve.choices): the token rule on SmolLM2's real
tokenizer, and decoding through the serving Generator with SmolLM2-135M-Instruct."""

from __future__ import annotations

import json

import pytest

from gt_ext.errors import GtExtError
from gt_ext.serve.params import SamplingParams

NAMES = ["revive-session", "hold-off", "file-warrant"]


@pytest.fixture(scope="module")
def smol_tok():
    from gt_ext.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def texts(smol_tok):
    from gt_ext.serve.choices import token_texts

    return token_texts(smol_tok)


def _spelled(smol_tok, ids: list[int]) -> set[str]:
    return {smol_tok.decode([i]) for i in ids}


@pytest.mark.parametrize("text, rests", [
    ('{"action": "', [n + '"' for n in NAMES]),
    ('{"evidence": "pane idle", "action": "re', ['vive-session"']),
    ('{"action": "hold-off', ['"']),
    ('{"action":', ['"' + n + '"' for n in NAMES] + [' "' + n + '"' for n in NAMES]),
    ('{"action": ', ['"' + n + '"' for n in NAMES]),
])
def test_allowed_tokens_spell_only_a_listed_name(smol_tok, texts, text: str, rests: list[str]):
    from gt_ext.serve.choices import allowed_tokens

    ids = allowed_tokens(text, {"action": NAMES}, texts)
    assert ids
    for t in _spelled(smol_tok, ids):  # each allowed token continues one listed value...
        assert any(r.startswith(t) or t.startswith(r) for r in rests), t
    for r in rests:  # ...and every listed value can be spelled (its first character at least)
        assert any(r.startswith(t) for t in _spelled(smol_tok, ids) if t), r


@pytest.mark.parametrize("text", [
    '{"reason": "',  # another field: free
    '{"evidence": "the action',  # inside free text
    '{"action": 3',  # not a string value
    '{"action": "restart',  # already off the list (a token spanned the quote): left as written
    '',
])
def test_free_where_no_listed_value_is_being_written(texts, text: str):
    from gt_ext.serve.choices import allowed_tokens

    assert allowed_tokens(text, {"action": NAMES}, texts) is None


@pytest.mark.parametrize("choices, fragment", [
    ({"action": []}, "choices['action']"),
    ({"action": ['say "hi"']}, "choices['action']"),
    ({"action": "wait"}, "choices['action']"),
    ({"": ["wait"]}, "bad field name"),
    (["action"], "choices must map"),
])
def test_bad_choices_are_one_line_errors(choices, fragment: str):
    with pytest.raises(GtExtError, match="sampling: ") as e:
        SamplingParams(choices=choices)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def smol():
    from gt_ext.serve.generate import Generator

    g = Generator("smollm2-135m-instruct")
    yield g
    g.close()


PROMPT = [{"role": "system", "content": "You answer with one JSON object and nothing else."},
          {"role": "user", "content": "Reply only JSON {\"action\": ..., \"reason\": ...}. The worker crashed; "
                                      "we restart crashed workers."}]


def test_a_constrained_answer_takes_a_listed_name_the_free_one_does_not(smol):
    """Greedy SmolLM2 answers in JSON with an action of its own; constrained to made-up names, the
    same answer's action is one of them, and the text before the value is untouched."""
    listed = ["zqx-alpha", "zqx-beta"]
    free = smol.chat(PROMPT, SamplingParams(max_new_tokens=60))
    held = smol.chat(PROMPT, SamplingParams(max_new_tokens=60, choices={"action": listed}))
    free_obj, _ = json.JSONDecoder().raw_decode(free[free.index("{"):])
    held_obj, _ = json.JSONDecoder().raw_decode(held[held.index("{"):])
    assert free_obj["action"] not in listed, free
    assert held_obj["action"] in listed, held
    cut = free.index('"action": "') + len('"action": "')
    assert held[:cut] == free[:cut]  # identical up to the value: nothing else is touched
