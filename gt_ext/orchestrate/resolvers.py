"""Resolvers: variables whose value must be looked up once, before any step runs.

A formula variable with `resolve = "NAME"` (a key of this project; gt ignores it) gets its resolver
called with every variable's value; the resolver returns extra values the steps may use. They are
computed once per run and recorded in the job's formula-state.json with the rest, so a resumed
run uses the same answer.

    registry-parent   `parent` (NAME:VER, `auto`, `none`) and `mode` (sft|dpo) ->
                      `parent_ref` (registry NAME:VER or "") and `train_base` (what the trainer
                      loads: `base_model`, or the parent's merged weights)
"""

from __future__ import annotations

from collections.abc import Callable

from gt_ext.errors import GtExtError

MODES = ("sft", "dpo")


def registry_parent(values: dict[str, str]) -> dict[str, str]:
    """Training on top of a registered model: DPO always starts from the role's current model
    (reference = that model, the new adapter off); SFT from the base unless a parent is named."""
    mode = (values.get("mode") or "sft").strip()
    if mode not in MODES:
        raise GtExtError(f"mode={mode!r}: use sft or dpo")
    parent = (values.get("parent") or "auto").strip()
    if parent in ("", "none") or (parent == "auto" and mode == "sft"):
        if mode == "dpo":
            raise GtExtError("mode=dpo trains on top of a role model: leave parent=auto or name one (NAME:VER)")
        return {"parent_ref": "", "train_base": values.get("base_model", "")}
    from gt_ext.registry import Registry

    role = values.get("role", "")
    with Registry.open() as reg:
        rec = reg.current(role) if parent == "auto" else reg.get(parent)
        if rec is None:
            raise GtExtError(f"mode={mode}: no {role} model in the registry to train on top of "
                             f"(register or deploy one, or --set parent=NAME:VER)")
    if rec.task:
        raise GtExtError(f"parent {rec.ref} is a task adapter; train on top of a role model")
    if rec.role != role:
        raise GtExtError(f"parent {rec.ref} was trained for role {rec.role}, not {role}")
    if rec.merged_dir is None:
        raise GtExtError(f"parent {rec.ref} has no merged weights ({rec.path}/merged); register an export of it")
    return {"parent_ref": rec.ref, "train_base": str(rec.merged_dir)}


RESOLVERS: dict[str, Callable[[dict[str, str]], dict[str, str]]] = {"registry-parent": registry_parent}


def resolve_extra(formula, values: dict[str, str]) -> dict[str, str]:  # noqa: ANN001 - Formula
    """Run the resolvers the formula's variables name; their values added to `values`."""
    out = dict(values)
    for var in formula.vars.values():
        if var.resolve is None:
            continue
        fn = RESOLVERS.get(var.resolve)
        if fn is None:
            raise GtExtError(f"{formula.path}: vars.{var.name}: unknown resolver {var.resolve!r} "
                             f"(known: {', '.join(RESOLVERS)})")
        out.update(fn(out))
    return out
