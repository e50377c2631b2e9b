"""Task adapters: trained on base + role LoRA, saved separately, stackable; export merges both."""

from __future__ import annotations

import json

import torch
from export_fixtures import make_run

from gt_ext.export.export import export_run


def test_task_adapter_on_role_model_exports_and_stacks(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gt_ext.models import load_model
    from gt_ext.train.config import LoraSettings
    from gt_ext.train.lora import add_lora, apply_role_adapter, save_adapter

    role = make_run(tmp_path / "role")
    # A task adapter the way `role_adapter=` trains it: role LoRA merged into the frozen base.
    base, _ = load_model("tiny-llama")
    role_model = apply_role_adapter(base, role / "adapter")
    torch.manual_seed(2)
    task = add_lora(role_model, LoraSettings(r=4, targets=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in task.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    run = tmp_path / "task"
    save_adapter(task, run / "adapter")
    meta = json.loads((role / "run.json").read_text())
    meta.update(task="code-review", parent=str(role / "adapter"))
    (run / "run.json").write_text(json.dumps(meta))
    # the task adapter file holds only its own tensors
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"] in (
        ["q_proj", "v_proj"], ["v_proj", "q_proj"])

    manifest = export_run(run, tmp_path / "out", quantized=[])
    assert manifest["task"] == "code-review" and manifest["parent"] == str(role / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "merged")).eval()

    # Stacked at inference: base + role adapter + task adapter, both active.
    fresh, _ = load_model("tiny-llama")
    stacked = PeftModel.from_pretrained(fresh, str(role / "adapter"), adapter_name="role")
    stacked.load_adapter(str(run / "adapter"), adapter_name="task")
    stacked.base_model.set_adapter(["role", "task"])
    ids = torch.tensor([[1, 9690, 198, 3108, 314, 260, 1345, 28, 2, 1, 520, 9531]])
    with torch.no_grad():
        a = stacked(input_ids=ids).logits
        b = merged(input_ids=ids).logits
        only_role = PeftModel.from_pretrained(load_model("tiny-llama")[0], str(role / "adapter"))(input_ids=ids).logits
    assert (a - b).abs().max() < 1e-4
    assert (a - only_role).abs().max() > 1e-3  # the task adapter contributes
