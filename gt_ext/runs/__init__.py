"""Experiment tracking: training runs (local, swarm, pipeline) listed, shown and compared (`gt-ext runs`)."""
