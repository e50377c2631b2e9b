"""Pipeline-parallel LoRA training and generation over node0 stage servers.

    stage.py   one stage: a span of an HF LLaMA's layers with LoRA (no node0, no network)

See docs/pipeline.md.
"""
