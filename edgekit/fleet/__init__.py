"""Fleets: many models x targets built on Ray, each step cached by the sha256 of its inputs, one report over all.

    spec.py    the fleet file (strict TOML)          plan.py   check every build, key every step, decide what runs
    cache.py   the content-addressed step cache      tasks.py  what a Ray worker runs (prepare a model, build a pair)
    run.py     the driver: Ray, cache, output folders report.py fleet.json, report.md, report.html
"""

from edgekit.fleet.run import FleetOptions, FleetRun, run_fleet
from edgekit.fleet.spec import FleetSpec, load_fleet

__all__ = ["FleetOptions", "FleetRun", "FleetSpec", "load_fleet", "run_fleet"]
