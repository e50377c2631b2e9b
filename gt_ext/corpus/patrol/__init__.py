"""Patrol decisions at the real steps of Gas Town's patrol formulas, for the witness, refinery,
deacon and dog: `steps` (what each step allows), `stage` (situations staged with the real tools,
labelled by the formula's rules), `build` (evidence cache, prompts, corpus sessions, suites)."""
