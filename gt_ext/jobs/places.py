"""Where job folders and the job beads live.

In a town: job folders under `<town>/.gt-ext/jobs/` and job beads in the town's own beads
(`<town>/.beads`). Outside a town: `$GT_EXT_HOME/jobs/` with a beads folder of its own there.
"""

from __future__ import annotations

import os
from pathlib import Path

from gt_ext.gastown.town import find_town
from gt_ext.paths import home_dir


def _town_root() -> Path | None:
    town = find_town()
    return Path(town.root) if town else None


def jobs_root() -> Path:
    """Folder that holds one subfolder per job."""
    if os.environ.get("GT_EXT_JOBS_DIR"):
        return Path(os.environ["GT_EXT_JOBS_DIR"])
    town = _town_root()
    return (town / ".gt-ext" / "jobs") if town else (home_dir() / "jobs")


def job_beads_dir() -> Path:
    """The beads folder job beads go to (created with the real `bd init` if needed)."""
    if os.environ.get("GT_EXT_JOB_BEADS_DIR"):
        return Path(os.environ["GT_EXT_JOB_BEADS_DIR"])
    town = find_town()
    if town is not None and town.beads_dir is not None:
        return town.beads_dir
    folder = jobs_root()
    beads = folder / ".beads"
    if not beads.is_dir():
        from gt_ext.gastown.bd import init_beads

        init_beads(folder, prefix="job")
    return beads
