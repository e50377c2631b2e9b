"""Corpus pipeline: collect agent sessions, scrub secrets, format, gate, store and export."""
