"""Shared by the curation tests: a writer interrupted mid-way."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def interrupt_writer(monkeypatch):
    """``interrupt_writer(key, at)``: from now on, the ``at``-th ``json.dumps`` of a dict holding ``key`` (one output line
    of a command) raises KeyboardInterrupt, as a kill would stop the writer there; returns the list of those calls."""

    def arm(key: str, at: int) -> list[int]:
        calls, dumps = [], json.dumps

        def dies_mid_way(obj, *args, **kwargs):
            if isinstance(obj, dict) and key in obj:
                calls.append(1)
                if len(calls) == at:
                    raise KeyboardInterrupt
            return dumps(obj, *args, **kwargs)

        monkeypatch.setattr(json, "dumps", dies_mid_way)
        return calls

    return arm
