"""A drill's default command line must be runnable: its fault has to fit inside its load."""

from __future__ import annotations

import argparse

from lab_kit.drills import api as api_drill


def test_the_api_drills_defaults_fit_the_outage_in_the_load():
    p = argparse.ArgumentParser()
    api_drill.add_arguments(p)
    a = p.parse_args([])
    assert a.lead + a.outage < a.posts / a.rate, vars(a)


def test_the_drill_commands_defaults_for_the_api_drill_fit_too(monkeypatch):
    seen = {}
    monkeypatch.setattr(api_drill, "main", lambda ns: seen.setdefault("ns", ns) and 0)
    api_drill.main_from_drill(argparse.Namespace(posts=None, rate=None, outage=None, lead=None,
                                                 json_path=None))
    ns = seen["ns"]
    assert ns.lead + ns.outage < ns.posts / ns.rate, vars(ns)
