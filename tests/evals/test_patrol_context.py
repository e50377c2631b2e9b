"""The patrol decision prompt stays within 3K tokens of the serving model, RAG context included."""

import pytest

from gt_ext.corpus.patrol.steps import ROLES
from gt_ext.corpus.tags import system_prompt
from gt_ext.evals import suite as suite_mod
from gt_ext.rag.retrieve import decision_budget, role_budget

LIMIT = 3000


@pytest.fixture(scope="module")
def tok():
    from gt_ext.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.mark.parametrize("role", ROLES)
def test_decision_prompt_plus_rag_budget_fits_3k(role, tok):
    st = suite_mod.load(f"builtin:{role}-patrol")
    longest = 0
    for t in st.tasks:
        msgs = [{"role": "system", "content": system_prompt(role)}, *t.prepare()]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        longest = max(longest, len(tok(text, add_special_tokens=False)["input_ids"]))
    answer = st.max_new_tokens
    assert 150 < longest < 1000, (role, longest)  # a real prompt was counted, and it stays short
    # The RAG context a decision gets (the role's budget, cut to the limit) keeps it within 3K.
    granted = decision_budget(role, longest, answer)
    assert longest + granted + answer <= LIMIT, (role, longest, granted)
    assert granted >= min(role_budget(role), 2000), (role, granted)  # and leaves most of the context


def test_decision_budget_cuts_only_what_does_not_fit():
    assert decision_budget("witness", 400, 48) == role_budget("witness")
    assert decision_budget("refinery", 560, 48) == 3000 - 560 - 48 < role_budget("refinery")
    assert decision_budget("refinery", 3100, 48) == 0
