"""Analysis of benchmark results: run records -> tables and figures; profiler captures -> step-time breakdowns.

Modules: `records` (load and flatten run records), `tables` (scaling, batch, freeze, transfer, MMD tables),
`plots` (PNG figures), `traces` (TensorFlow profiler and Horovod timeline parsing), `report` (all of it into a
folder with report.md; used by `bratsbench analyze`). Importing this package does not import TensorFlow.
"""
