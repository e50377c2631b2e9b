"""node0_patches ships with the package: an installed `gt-ext` can start stages from any folder."""

from __future__ import annotations

import os
import subprocess
import sys


def test_node0_patches_imports_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", "import node0_patches, gt_ext.pipeline.inference; "
                          "print(node0_patches.__name__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "node0_patches"
