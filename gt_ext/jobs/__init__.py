"""Training jobs tracked as beads: one job bead per formula run, moved through custom statuses."""

from gt_ext.jobs.statuses import JOB_STATUSES

__all__ = ["JOB_STATUSES"]
