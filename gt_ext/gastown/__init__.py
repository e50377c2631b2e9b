"""The one place that talks to Gas Town: town files, settings, `bd`, `gt` and `dolt`.

    find_town()                      -> Town | None     (gt_ext.gastown.town)
    settings.load(path) / save(...)  keep unknown keys, atomic, with a backup
    Bd(beads_dir).create/list/...    the real `bd` with --json (gt_ext.gastown.bd)
    DoltServer(data_dir).start()     a real `dolt sql-server` on 127.0.0.1 (gt_ext.gastown.dolt)
    Gt(town_root).run(...)           the real `gt` (gt_ext.gastown.gt)
    read_events(town.events_file)    gt's .events.jsonl (gt_ext.gastown.events; town_events -> dicts)
    Town.session_id_of(actor)        an agent's `.runtime/session_id`
"""

from gt_ext.gastown.binaries import find_bd, find_dolt, find_gt
from gt_ext.gastown.town import Rig, Town, find_town

__all__ = ["Rig", "Town", "find_bd", "find_dolt", "find_gt", "find_town"]
