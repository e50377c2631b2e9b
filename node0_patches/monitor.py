"""node0's `MonitorWorker`, reporting what a fine-tuning operator needs: the stage's announcement
(span, fingerprints, step) for trainers, and its metrics (step, micro-batches, tokens/s, replicas,
skipped micro-batches) for `gt-ext swarm status`, both in the DHT.

node0's worker parses its own log lines and kills the process group on some of them, and reports
only FLOPs and active time to Pluralis' dashboard; this subclass keeps its FLOP accounting
(`monitor_callback`) and replaces the loop. It is not attached to the log stream.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gt_ext.pipeline.records import stages_key
from node0_patches import load_node0

log = logging.getLogger(__name__)

STAGE_TTL_S = 6.0  # an announcement outlives a few refreshes; a dead stage vanishes within this


@functools.cache
def stage_monitor_class() -> type:
    """Subclass of node0's MonitorWorker (see module docstring)."""
    load_node0()
    from node0.utils.monitor import MonitorWorker

    class StageMonitor(MonitorWorker):
        def __init__(self, run: str, record: Callable[[], dict[str, Any]], period_s: float = 2.0,
                     extra: Callable[[], None] | None = None):
            super().__init__(stats_report_interval=max(1, int(period_s)), experiment_prefix=run)
            self.run_name, self.record, self.period_s, self.extra = run, record, period_s, extra
            self.stop_event = threading.Event()
            self._last_tokens, self._last_t = 0.0, time.monotonic()

        def publish(self) -> None:
            """Announce the stage and publish its metrics once."""
            from hivemind.utils.timed_storage import get_dht_time

            from gt_ext.swarm.dht import publish_metrics

            rec = self.record()
            now, t = get_dht_time(), time.monotonic()
            rec["tokens_per_s"] = (rec.get("tokens", 0.0) - self._last_tokens) / max(t - self._last_t, 1e-9)
            self._last_tokens, self._last_t = rec.get("tokens", 0.0), t
            rec["updated"] = now
            pid = self.dht.peer_id.to_bytes().hex()
            self.dht.store(stages_key(self.run_name), subkey=pid, value=rec, expiration_time=now + STAGE_TTL_S)
            publish_metrics(self.dht, self.run_name, {
                "role": "stage", "state": rec.get("state", "running"), "layers": f"{rec['first']}-{rec['last'] - 1}",
                "epoch": rec.get("epoch"), "samples": rec.get("samples"), "peers": rec.get("peers"),
                "tokens_per_s": rec["tokens_per_s"], "nan_skips": rec.get("nan_skips", 0), "updated": now,
            })
            if self.extra is not None:
                self.extra()

        def run(self) -> None:
            while not self.stop_event.is_set():
                try:
                    if self.dht is not None:
                        self.publish()
                except Exception as e:  # the DHT may be shutting down; never kill the stage for metrics
                    log.debug("stage announcement failed: %s", e)
                self.stop_event.wait(self.period_s)

    return StageMonitor
