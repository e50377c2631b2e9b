"""Corpus pipeline: collect agent sessions, scrub secrets, format, gate, store, and write the
training shards (`shards.py`, the `gt corpus export` command and the one reader of its output)."""
