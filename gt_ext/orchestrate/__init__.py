"""Formulas: this project's `*.formula.toml` files (gt's schema) and a runner for their steps.

Real `gt formula run` turns every step into a bead for a polecat; this project's formulas also name,
in each step's `run` key (gt ignores unknown keys), the command that performs the step, so
`gt formula run train-role-model --set role=witness` can run them here, in dependency order.
"""

from gt_ext.orchestrate.formula import Formula, Step, find_formula, list_formulas, load_formula

__all__ = ["Formula", "Step", "find_formula", "list_formulas", "load_formula"]
