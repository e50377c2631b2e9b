"""Model registry: versions, lineage, eval verdicts, deployment to Gas Town roles, rollback, prune.

    from gt_ext.registry import Registry
    reg = Registry.open()            # town from cwd/GT_TOWN_ROOT, else the per-user registry
    rec = reg.register(export_dir)   # ModelRecord: .path .adapter_dir .merged_dir .gguf_path ...
"""

from gt_ext.registry.db import Deployment, ModelRecord
from gt_ext.registry.deploy import AGENT_COMMAND, PROVIDER, READY_PROMPT, agent_name, runtime_config
from gt_ext.registry.registry import DeployResult, Registry, models_root, parse_ref

__all__ = ["AGENT_COMMAND", "PROVIDER", "READY_PROMPT", "DeployResult", "Deployment", "ModelRecord",
           "Registry", "agent_name", "models_root", "parse_ref", "runtime_config"]
