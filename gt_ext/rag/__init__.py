"""RAG over the town's live state: a Chroma index of beads, settings, docs, formulas and sessions.

    gt_ext.rag.retrieve.context_for(prompt, role, rig=None, town=None, budget_tokens=2500) -> str
    gt_ext.rag.queue.enqueue(town_root, event)      # for bd hooks: fast, no chroma/torch import
    gt_ext.rag.index.reindex(town_root, full=False)  # the one writer
"""
