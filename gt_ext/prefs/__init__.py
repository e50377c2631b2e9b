"""Task-level preferences: one bead slung to two models in isolated Dolt and git branches, the
better outcome picked by a person or by measured failure modes, the pair kept for DPO.

    record.py   Comparison / Outcome / Decision records and their store (<town>/.gt-ext/prefs/)
    sling.py    `gt-ext prefs sling`: branches, clones, branch proxies, the two agents, measurement
    outcome.py  failure modes and the auto-pick rule
    pick.py     `gt-ext prefs pick|drop`: DPO pair, merges (conflicts refused), branch cleanup
    trigger.py  `dpo_due(role)` / `start_dpo(role)`: when accumulated pairs call for a DPO run
"""
