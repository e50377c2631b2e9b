"""Cost of the `gt` front door: `gt version` through our shim vs the real gt called directly.

Both run in this process, interleaved, N times each; prints median wall times and the ratio.
The baseline is the real gt binary; the shim adds one Python start (-I -S, stdlib only) + exec.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gt_ext.gastown.binaries import find_gt  # noqa: E402
from gt_ext.shim import install_shim  # noqa: E402

N = 15


def _time(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=True)
    return time.perf_counter() - t0


def main() -> int:
    real = find_gt(required=False)
    if real is None:
        print("bench_gt_shim: SKIPPED (real gt not installed; run ./install.sh)")
        return 0
    with tempfile.TemporaryDirectory() as d:
        shim = install_shim([Path(d)])[0]
        env = {"PATH": "/usr/bin:/bin", "GT_REAL_BIN": real, "HOME": d}
        _time([real, "version"], env)  # warm the page cache for both
        _time([str(shim), "version"], env)
        direct, via = [], []
        for _ in range(N):
            direct.append(_time([real, "version"], env))
            via.append(_time([str(shim), "version"], env))
    md, mv = statistics.median(direct), statistics.median(via)
    print(f"gt version, median of {N}: real gt {md * 1000:.1f} ms, via shim {mv * 1000:.1f} ms "
          f"(+{(mv - md) * 1000:.1f} ms); ratio shim/real = {mv / md:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
