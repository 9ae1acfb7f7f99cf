"""Sub-commands of the `bratsbench` CLI; each module exposes `register(subparsers)`.

`register` adds one parser and sets `func` to a callable `run(args) -> int`.
"""

COMMANDS = (
    "train",
    "launch",
    "evaluate",
    "predict",
    "synth",
    "prepare",
    "split",
    "transfer",
    "shift",
    "comm",
    "sweep",
    "analyze",
    "compare",
    "demo",
    "env",
)
