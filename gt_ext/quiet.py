"""`--no-progress`: no progress bars and no warnings from libraries, only our own messages.

transformers draws a bar while it loads weights and warns about its own deprecations
(FutureWarning, `is_gradient_checkpointing`...); a user who asked for no progress output, or a
formula step whose stderr becomes a bead note, gets none of that. Our own log messages stay.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "peft", "accelerate", "datasets", "sentence_transformers",
                    "torch", "hivemind", "chromadb")


def quiet_libraries() -> None:
    """Turn off library progress bars and warnings for this process (and the processes it starts)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub (and so transformers) at import
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    if "transformers" in sys.modules:  # imported already: tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Library warnings (deprecations, "this will change in v6") are for the library's users, not ours.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(?!gt_ext)")
