"""Distributed LoRA training on a self-hosted hivemind swarm.

    auth.py   swarm key: HMAC access tokens for the DHT + membership gate on every averager
    dht.py    start a DHT node (127.0.0.1 unless --listen), publish/read per-peer metrics
    optim.py  hivemind.Optimizer over LoRA params only (optional PowerSGD), lockstep rounds
    peer.py   one peer's training loop on the training core (gt_ext.train), run-folder output
    cli.py    `gt-ext swarm keygen | start | status`
"""
