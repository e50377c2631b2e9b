"""gastown-finetune: train, evaluate, register and serve Gas Town role models.

Data flows one way through the subpackages:

    hooks -> corpus -> train (or swarm) -> export -> evals -> registry -> serve
                 ^                                                        |
                 +------------- session transcripts (JSONL) --------------+

`gt_ext.gastown` is the only package that talks to gt, bd, Dolt and town files.
"""

__version__ = "0.1.0"
