"""Experiment sweeps: a YAML spec (spec.py) -> planned runs with stable IDs (plan.py) -> run here (runner.py)
or as SLURM/PBS job arrays (emit.py), all sharing RESULTS/sweep.json through a locked index (index.py)."""

from harness.sweep.plan import PlannedRun, plan
from harness.sweep.spec import SweepSpec, load_spec, parse_spec

__all__ = ["PlannedRun", "SweepSpec", "load_spec", "parse_spec", "plan"]
