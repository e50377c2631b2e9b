"""Adapters that let an upstream node0 checkout fine-tune LoRA adapters in a self-hosted swarm.

node0 (PluralisResearch/node0, Apache-2.0) is not installable from any registry and its code is
never copied here. Point `NODE0_PATH` at a checkout; `load_node0()` puts `<checkout>/src` on
`sys.path`, applies the two compatibility names node0 expects from its pinned hivemind commit, and
imports it. Nothing in node0's files is edited: additions hook in by subclassing and registering
new names.

    from node0_patches import load_node0
    from node0_patches.lora import register_lora_experts        # lm_head_lora / lm_body_lora / lm_tail_lora
    from node0_patches.optim import trainable_autostep_optimizer_class
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

ENV = "NODE0_PATH"


def node0_checkout() -> Path | None:
    """The checkout named by $NODE0_PATH, or None when unset."""
    p = os.environ.get(ENV)
    return Path(p).expanduser() if p else None


def _hivemind_compat() -> None:
    """node0 imports two names that moved in hivemind 1.1.x; provide them under the old names."""
    import hivemind
    import hivemind.utils

    if not hasattr(hivemind, "PeerID"):
        from hivemind.p2p import PeerID

        hivemind.PeerID = PeerID
    if not hasattr(hivemind.utils, "use_hivemind_log_handler"):
        from hivemind.utils import logging as hm_logging

        hivemind.utils.use_hivemind_log_handler = hm_logging.use_hivemind_log_handler


def resolve_checkout(path: str | os.PathLike | None = None) -> Path:
    """The node0 checkout (argument or $NODE0_PATH), checked; one-line error when it is missing."""
    root = Path(path).expanduser() if path else node0_checkout()
    if root is None:
        raise GtExtError(f"no node0 checkout: set {ENV} to a clone of github.com/PluralisResearch/node0")
    if not (root / "src" / "node0" / "__init__.py").is_file():
        raise GtExtError(f"{ENV}={root}: not a node0 checkout (no src/node0/__init__.py)")
    return root


def load_node0(path: str | os.PathLike | None = None) -> ModuleType:
    """Import node0 from a checkout (argument or $NODE0_PATH); one-line error when it is missing."""
    src = resolve_checkout(path) / "src"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    _hivemind_compat()
    return importlib.import_module("node0")
