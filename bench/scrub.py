"""Benchmark: our scrubber against detect-secrets alone, on the same text, in one process.

Prints throughput (lines/s) of both and the ratio, and recall / precision of both on a planted
set of 42 credential formats and 45 look-alike decoys (git SHAs, UUIDs, hashes, base64 blobs,
integrity strings, docker digests), mixed into sample-town transcript lines as extra negatives.
Then per family (`planted.credential_families` / `decoy_families`: unquoted tokens in shell and
log lines, NAME=value, docker config.json, .npmrc, .pypirc, .netrc, .git-credentials, kubeconfig,
cloud CLI credential files, .env, private keys, JWTs; decoys: commit ids, hashes, UUIDs,
placeholders, config values, identifiers, public certificates, data URIs): recall per credential
family and the share of decoy texts left intact, ours vs detect-secrets alone.

    .venv/bin/python bench/scrub.py [--repeat 3] [--sample-lines 4000]

A secret line counts as caught when its value is gone from the scrubbed output or the text is
sent to quarantine; any finding on a decoy or plain line is a false positive.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from gt_ext.corpus.planted import credential_families, decoy_families, secrets_and_decoys
from gt_ext.corpus.sample_town import generate
from gt_ext.corpus.scrub import Scrubber, _ds_plugins


def ds_alone(line: str, plugins) -> bool:
    """detect-secrets' default plugins on one line: does anything fire?"""
    return any(True for p in plugins for _ in p.analyze_line(filename="transcript.txt", line=line, line_number=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sample-lines", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    plain = [ln for s in generate(args.seed, witness=40, per_role=8) for m in s.messages
             for ln in m["content"].splitlines() if ln.strip()]
    plain = random.Random(args.seed).sample(plain, min(args.sample_lines, len(plain)))
    secrets, decoys = [], []
    for seed in range(3):
        s, d = secrets_and_decoys(seed)
        secrets += s
        decoys += d
    scrubber = Scrubber(extra_usernames=())
    plugins = _ds_plugins()

    # --- quality ---------------------------------------------------------------------------
    def ours_flags(text: str) -> bool:
        return bool(scrubber.scan(text))

    tp = sum(1 for _k, line, value in secrets if (r := scrubber.scrub(line)).quarantine or value not in r.text)
    tp_ds = sum(1 for _k, line, _v in secrets if any(ds_alone(part, plugins) for part in line.splitlines()))
    fp_decoy = sum(ours_flags(line) for _k, line in decoys)
    fp_decoy_ds = sum(ds_alone(line, plugins) for _k, line in decoys)
    fp_plain = sum(ours_flags(line) for line in plain)
    fp_plain_ds = sum(ds_alone(line, plugins) for line in plain)
    n = len(secrets)

    def prec(tp_: int, fp_: int) -> float:
        return tp_ / (tp_ + fp_) if tp_ + fp_ else 0.0

    # --- speed: same lines, both paths -------------------------------------------------------
    lines = plain + [ln for _k, line, _v in secrets for ln in line.splitlines()] + [line for _k, line in decoys]
    text = "\n".join(lines)
    t_ours = t_ds = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        scrubber.scrub(text)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for ln in lines:
            ds_alone(ln, plugins)
        t_ds = min(t_ds, time.perf_counter() - t0)

    res = {
        "formats": len({k for k, _l, _v in secrets}), "secrets": n, "decoys": len(decoys), "plain_lines": len(plain),
        "ours": {"recall": tp / n, "precision_planted": prec(tp, fp_decoy), "precision_all": prec(tp, fp_decoy + fp_plain),
                 "decoys_flagged": fp_decoy, "plain_flagged": fp_plain, "lines_per_s": len(lines) / t_ours},
        "detect_secrets": {"recall": tp_ds / n, "precision_planted": prec(tp_ds, fp_decoy_ds),
                           "precision_all": prec(tp_ds, fp_decoy_ds + fp_plain_ds), "decoys_flagged": fp_decoy_ds,
                           "plain_flagged": fp_plain_ds, "lines_per_s": len(lines) / t_ds},
        "speed_ratio_ours_over_detect_secrets": t_ds / t_ours,
    }
    res["families"] = family_table(scrubber, plugins, seeds=range(3))
    print(json.dumps(res, indent=2))
    o, d = res["ours"], res["detect_secrets"]
    print(f"\nrecall     ours {o['recall']:.3f}   detect-secrets {d['recall']:.3f}   (aim >= 0.99)")
    print(f"precision  ours {o['precision_planted']:.3f}   detect-secrets {d['precision_planted']:.3f}   (planted set; aim >= 0.95)")
    print(f"speed      ours {o['lines_per_s']:.0f} lines/s   detect-secrets {d['lines_per_s']:.0f} lines/s   "
          f"ratio {res['speed_ratio_ours_over_detect_secrets']:.2f}x")
    print(f"\n{'family':<20} {'kind':<7} {'n':>4}  {'ours':>6}  {'detect-secrets':>14}")
    for fam, row in res["families"].items():
        print(f"{fam:<20} {row['kind']:<7} {row['n']:>4}  {row['ours']:>6.2f}  {row['detect_secrets']:>14.2f}")
    print("(credential rows: recall, share of values removed or quarantined; decoy rows: share of texts left intact)")


def family_table(scrubber: Scrubber, plugins, seeds) -> dict[str, dict]:
    """Per family: recall (credentials) or decoy preservation (decoys), ours vs detect-secrets."""
    rows: dict[str, dict] = {}
    for seed in seeds:
        for fam, text, values in credential_families(seed):
            r = scrubber.scrub(text)
            lines = text.splitlines()
            for v in values:
                row = rows.setdefault(fam, {"kind": "secret", "n": 0, "ours": 0, "detect_secrets": 0})
                row["n"] += 1
                row["ours"] += r.quarantine or v not in r.text
                row["detect_secrets"] += any(ds_alone(ln, plugins) for ln in lines if v.splitlines()[0] in ln)
        for fam, text in decoy_families(seed):
            row = rows.setdefault(f"decoy:{fam}", {"kind": "decoy", "n": 0, "ours": 0, "detect_secrets": 0})
            row["n"] += 1
            r = scrubber.scrub(text)
            row["ours"] += not r.findings and r.text == text
            row["detect_secrets"] += not any(ds_alone(ln, plugins) for ln in text.splitlines())
    for row in rows.values():
        row["ours"] /= row["n"]
        row["detect_secrets"] /= row["n"]
    return rows


if __name__ == "__main__":
    main()
