"""Analysis of benchmark results: run records -> tables and figures; profiler captures -> step-time breakdowns.

Modules: `records` (load and flatten run records; the system each ran on), `tables` (scaling, batch, freeze,
transfer, MMD tables), `plots` (PNG figures), `traces` (TensorFlow profiler and Horovod timeline parsing), `report`
(all of it into a folder with report.md; used by `bratsbench analyze`), `points` (a point's identity and
measurements across folders), `compare` (B against A per point; `bratsbench compare`), `reference` (performance
references with tolerances). Importing this package does not import TensorFlow.
"""
