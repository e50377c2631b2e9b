"""The patrol decision prompt stays within 3K tokens of the serving model, RAG context included."""

import pytest

from gt_ext.corpus.patrol.steps import ROLES
from gt_ext.corpus.tags import system_prompt
from gt_ext.evals import suite as suite_mod
from gt_ext.rag.retrieve import role_budget

LIMIT = 3000


@pytest.mark.parametrize("role", ROLES)
def test_decision_prompt_plus_rag_budget_fits_3k(role):
    from gt_ext.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    st = suite_mod.load(f"builtin:{role}-patrol")
    longest = 0
    for t in st.tasks:
        msgs = [{"role": "system", "content": system_prompt(role)}, *t.prepare()]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        longest = max(longest, len(ids["input_ids"] if isinstance(ids, dict) else ids))
    answer = st.max_new_tokens
    assert longest + role_budget(role) + answer <= LIMIT, (role, longest, role_budget(role))
