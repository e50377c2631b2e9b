"""Serving: generation (`generate.Generator`), the `node0-inference` agent, and the prompt API.

Import the heavy parts from their modules (`gt_ext.serve.generate`); this package import stays cheap.
"""

from gt_ext.serve.params import SamplingParams

__all__ = ["SamplingParams"]
