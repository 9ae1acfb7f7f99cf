"""Documentation that cannot drift from the code (no training runs here; every check takes well under a second).

(a) docs/cli.md is what scripts/gen-cli-docs.py generates from the argparse definitions now;
(b) every `bratsbench ...` command in a shell code block of README.md and docs/*.md parses with the real parser
    (`parse_args` only: nothing runs), also behind `horovodrun`/`srun`/`mpirun` and across `\\` continuations.
    Placeholders are deliberate: a word such as RUN or SPEC parses as a path, but a placeholder where a number or a
    choice belongs (`--pack T`, `slurm|pbs`) fails, so shell blocks hold concrete examples and a synopsis goes in a
    ```text block (not checked; every block must name its language);
(c) every relative link and image in README.md, CHANGELOG.md and docs/*.md resolves, `#anchors` included
    (GitHub's heading anchors);
(d) every spec in examples/ plans (the real spec parser and planner, as `bratsbench sweep plan`).

Each check is a function that returns its problems; the tests feed each one bad input too and see it fail.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import re
import shlex
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")  # code blocks whose `bratsbench` lines are commands
OPERATORS = re.compile(r"^[|&;<>()]+$")  # a shell operator ends a simple command (shlex punctuation tokens)
KEYWORDS = {"do", "then", "else", "elif", "time", "!", "{"}  # words before a command that are not the command
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # VAR=value before a command
LAUNCHERS = {"horovodrun", "srun", "mpirun", "mpiexec", "env", "nohup", "flock", "timeout", "taskset", "numactl"}


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen-cli-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


# ---------------------------------------------------------------- (a) the command-line reference


def cli_reference_problem(checked_in: str, generated: str) -> str | None:
    """None when the checked-in reference equals the generated one; else the first differences and the fix."""
    if checked_in == generated:
        return None
    diff = list(difflib.unified_diff(checked_in.splitlines(), generated.splitlines(), "docs/cli.md (checked in)",
                                     "generated", lineterm="", n=0))
    return (f"docs/cli.md is stale: regenerate it with `{gen.REGENERATE}`\n" + "\n".join(diff[:30]))


def test_cli_reference_is_current():
    problem = cli_reference_problem((ROOT / "docs" / "cli.md").read_text(), gen.render())
    assert problem is None, problem


def test_cli_reference_check_fails_on_a_stale_page():
    current = gen.render()
    stale = current.replace("| `--bench-steps` |", "| `--bench-stepz` |")
    assert stale != current
    problem = cli_reference_problem(stale, current)
    assert problem is not None and gen.REGENERATE in problem and "--bench-stepz" in problem


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = gen.render()
    monkeypatch.setenv("COLUMNS", "300")
    assert gen.render() == narrow


def test_cli_reference_has_every_command_and_sweep_step():
    from harness.commands import COMMANDS

    page = gen.render()
    for name in (*COMMANDS, "sweep plan", "sweep run", "sweep emit"):
        assert f"## `bratsbench {name}`" in page, name
    assert "| `--amp` |  | mixed precision: float16 with loss scaling on GPUs, bfloat16 on CPUs |" in page


# ---------------------------------------------------------------- (b) examples parse


def shell_blocks(text: str) -> list[tuple[int, str, str]]:
    """(first content line, 1-based; language; content) of every fenced code block."""
    return [(t.map[0] + 2, t.info.strip().split(" ")[0], t.content) for t in _markdown().parse(text) if t.type == "fence"]


def commands(block: str, first_line: int, console: bool = False) -> list[tuple[int, list[str]]]:
    """(line, argv after `bratsbench`) of every bratsbench command in a shell block: `\\` continuations joined,
    comments skipped, each simple command (split at |, &&, ;, > ... and at do/then/else) checked: `bratsbench` in
    command position after any `VAR=value`, or after a launcher (horovodrun, srun, mpirun ...) and its options.
    `conda activate bratsbench` names an environment, not the command. A console block's commands are its `$ ` lines."""
    found = []
    lines = block.split("\n")
    i = 0
    while i < len(lines):
        start, line = first_line + i, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i]
        i += 1
        if console:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if "bratsbench" not in line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as exc:  # an unbalanced quote
            found.append((start, [f"<unparsable shell line: {exc}>"]))
            continue
        simple: list[list[str]] = [[]]
        for token in tokens:
            if OPERATORS.match(token):
                simple.append([])
            elif not simple[-1] and token in KEYWORDS:
                continue
            else:
                simple[-1].append(token)
        for words in simple:
            while words and ASSIGNMENT.match(words[0]):
                words = words[1:]
            if not words:
                continue
            if _is_bratsbench(words[0]):
                found.append((start, words[1:]))
            elif words[0].rsplit("/", 1)[-1] in LAUNCHERS:
                at = next((j for j, w in enumerate(words) if _is_bratsbench(w)), None)
                if at is not None:
                    found.append((start, words[at + 1:]))
    return found


def _is_bratsbench(word: str) -> bool:
    return word == "bratsbench" or word.endswith("/bratsbench")


@lru_cache(maxsize=1)
def _parser():
    from harness.cli import build_parser

    return build_parser()


def parse_problem(argv: list[str]) -> str | None:
    """argparse's complaint about `bratsbench ARGV`, or None when it parses (nothing runs)."""
    from harness.commands import COMMANDS

    if argv and argv[0].startswith("<unparsable"):
        return argv[0]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = _parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help, --version
            return None
        return (err.getvalue().strip().splitlines() or [f"exit {exc.code}"])[-1]
    if getattr(args, "command", None) == "launch":  # the command each rank runs: `launch ... -- train ...`
        inner = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if inner and inner[0] in COMMANDS:
            return parse_problem(inner)
    if not getattr(args, "func", None):
        return "no command (bratsbench alone prints its help)"
    return None


def example_problems(text: str, where: str) -> list[str]:
    """`file:line: bratsbench ...: what argparse said` for every example in shell blocks that does not parse."""
    problems = []
    for first, lang, content in shell_blocks(text):
        if lang not in SHELL:
            continue
        for line, argv in commands(content, first, console=lang == "console"):
            problem = parse_problem(argv)
            if problem:
                problems.append(f"{where}:{line}: bratsbench {shlex.join(argv)}: {problem}")
    return problems


def test_every_bratsbench_example_in_the_docs_parses():
    problems, seen = [], 0
    for path in DOCS:
        text = path.read_text()
        problems += example_problems(text, path.relative_to(ROOT).as_posix())
        seen += sum(len(commands(c, f)) for f, lang, c in shell_blocks(text) if lang in SHELL)
    assert not problems, "\n".join(problems)
    assert seen >= 30  # the docs show the commands; an extractor that finds nothing would pass vacuously


def test_every_code_block_names_its_language():
    """An example hidden in a block without a language would escape the check above."""
    missing = [f"{p.relative_to(ROOT)}:{first - 1}" for p in DOCS for first, lang, _ in shell_blocks(p.read_text())
               if not lang]
    assert not missing, "code blocks without a language (```bash, ```text, ```yaml ...): " + ", ".join(missing)


GOOD_BLOCKS = [
    "```bash\nbratsbench train --synthetic --crop 32 32 32 --out runs/a   # a comment --not-an-option\n```",
    "```bash\nhorovodrun -np 2 -H localhost:2 --gloo bratsbench train --synthetic \\\n    --benchmark --out runs/b\n```",
    "```bash\nsrun --ntasks=4 .venv/bin/bratsbench train --backend mwms --synthetic --out runs/c && echo done\n```",
    "```bash\nbratsbench launch --backend mwms -np 2 -- train --synthetic --out runs/d\n```",
    "```console\n$ bratsbench sweep plan examples/sweep-demo.yaml\nrun_id  label  np  batch  freeze  mode  seed  after\n```",
    "```text\nbratsbench: error: this is output, not a command --nope\n```",
    "```bash\nconda env create -f environment.yml && conda activate bratsbench --not-bratsbench-options\n```",
    "```bash\nfor r in results/runs/*/; do bratsbench evaluate --run \"$r\" --subset test; done\n```",
]
BAD_BLOCKS = [
    ("```bash\nbratsbench train --synthetic --bogus-flag\n```", "unrecognized arguments: --bogus-flag"),
    ("```bash\nbratsbench sweep plan \\\n    examples/sweep-demo.yaml --jsn\n```", "unrecognized arguments: --jsn"),
    ("```bash\nhorovodrun -np 2 bratsbench train --crop 32 32 --out x\n```", "--crop: expected 3 argument"),
    ("```sh\nsrun --ntasks=2 bratsbench train --backend tf --out x\n```", "invalid choice: 'tf'"),
    ("```bash\nbratsbench launch -np 2 -- train --epochs many\n```", "--epochs: invalid int value"),
    ("```bash\nbratsbench sweep emit examples/sweep-demo.yaml --out jobs/x\n```", "--scheduler"),
    ("```bash\nbratsbench sweep run SPEC --out RESULTS --pack T\n```", "--pack: invalid int value: 'T'"),
    ("```console\n$ bratsbench analyse results\n```", "invalid choice: 'analyse'"),
    ("```bash\nconda activate bratsbench && TF_CPP_MIN_LOG_LEVEL=0 bratsbench train --ampp\n```", "--ampp"),
    ("```bash\nfor r in a b; do bratsbench evaluate --run \"$r\" --subset tests; done\n```", "invalid choice: 'tests'"),
]


@pytest.mark.parametrize("block", GOOD_BLOCKS)
def test_example_check_accepts(block):
    assert example_problems(f"# t\n\n{block}\n", "t.md") == []


@pytest.mark.parametrize("block, said", BAD_BLOCKS)
def test_example_check_fails_on_a_bad_example(block, said):
    problems = example_problems(f"# t\n\ntext\n\n{block}\n", "t.md")
    assert len(problems) == 1 and said in problems[0], problems
    assert problems[0].startswith("t.md:6: bratsbench "), problems  # the file and the line the command starts on


# ---------------------------------------------------------------- (c) links and images


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text; a repeated heading gets -1, -2, ... as on GitHub."""
    tokens, seen, out = _markdown().parse(text), {}, set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            inline = tokens[i + 1]
            words = "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))
            slug = gen.slug(words.strip())  # the same anchors the generated reference links to
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def targets(text: str) -> list[tuple[int, str]]:
    """(line, href or image src) of every link and image."""
    found = []
    for token in _markdown().parse(text):
        for child in token.children or []:
            if child.type == "link_open":
                found.append((token.map[0] + 1 if token.map else 0, child.attrGet("href")))
            elif child.type == "image":
                found.append((token.map[0] + 1 if token.map else 0, child.attrGet("src")))
    return found


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links and images of a Markdown file that do not resolve: a missing file, a path outside the
    repository, or an anchor that no heading of the target page has. External links (http:, mailto:) are skipped."""
    text = path.read_text()
    problems = []
    for line, href in targets(text):
        where = f"{path.relative_to(root)}:{line}: {href}"
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", href):
            continue
        file_part, _, anchor = href.partition("#")
        target = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not target.is_relative_to(root.resolve()):
            problems.append(f"{where}: points outside the repository")
        elif not target.exists():
            problems.append(f"{where}: no such file")
        elif anchor:
            if target.suffix != ".md" or target.is_dir():
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(target.read_text()):
                problems.append(f"{where}: no heading with this anchor in {target.name}")
    return problems


def test_every_relative_link_and_image_resolves():
    problems = [p for path in DOCS for p in link_problems(path)]
    assert not problems, "\n".join(problems)
    assert sum(len(targets(p.read_text())) for p in DOCS) >= 30  # the pages do link to each other


def test_the_pages_the_readme_promises_exist():
    readme = {href for _, href in targets((ROOT / "README.md").read_text())}
    for page in ("install", "data", "clusters", "transfer-study", "results", "profiling", "troubleshooting", "cli",
                 "benchmarks"):
        assert f"docs/{page}.md" in readme, page
    assert "CHANGELOG.md" in readme


def test_anchors_follow_github():
    text = "# Two commands\n\n## `bratsbench sweep emit`\n\n## Exit status 0, 1, 2 and 130\n\n## Two commands\n"
    assert anchors(text) == {"two-commands", "bratsbench-sweep-emit", "exit-status-0-1-2-and-130", "two-commands-1"}


def test_link_check_fails_on_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n")
    (tmp_path / "docs" / "images").mkdir()
    (tmp_path / "docs" / "images" / "plot.png").write_bytes(b"png")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n## Local part\n\n"
        "[ok](other.md) [ok](other.md#a-section) [ok](#local-part) ![ok](images/plot.png) [web](https://example.org/x)\n\n"
        "[gone](missing.md) [bad anchor](other.md#no-such-section) [bad local](#nowhere)\n\n"
        "![no image](images/none.png) [out](../../outside.md) [image anchor](images/plot.png#x)\n")
    problems = link_problems(page, tmp_path)
    assert [p.split(": ", 1)[0].split(":")[-1] for p in problems] == ["7"] * 3 + ["9"] * 3
    said = "\n".join(problems)
    for text in ("missing.md: no such file", "other.md#no-such-section: no heading with this anchor in other.md",
                 "#nowhere: no heading with this anchor in page.md", "images/none.png: no such file",
                 "../../outside.md: points outside the repository", "plot.png#x: an anchor into a file that is not Markdown"):
        assert text in said, said


# ---------------------------------------------------------------- (d) example specs plan


def spec_problems(paths: list[Path]) -> list[str]:
    """`path: error` for every spec that `bratsbench sweep plan` would refuse (or that plans no run)."""
    from harness.errors import UserError
    from harness.sweep.plan import plan
    from harness.sweep.spec import load_spec

    problems = []
    for path in paths:
        try:
            if not plan(load_spec(path)):
                problems.append(f"{path}: plans no run")
        except UserError as exc:  # its message names the file already
            problems.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
    return problems


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_every_example_spec_plans():
    assert len(EXAMPLES) >= 3 and (ROOT / "examples" / "sweep-gpu-cluster.yaml") in EXAMPLES
    problems = spec_problems(EXAMPLES)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("body, said", [
    ("axes: {np: [0]}\nfixed: {data: {synthetic: true}}\n", "axes.np value 0 must be >= 1"),
    ("axes: {np: [1]}\nfixed: {data: {synthetic: true}, model: {depth: 5}}\n", "depth 5 is too deep for crop"),
    ("axes: {np: [1]}\nfixed: {data: {synthetic: true}}\nrepeat: 3\n", "unknown key 'repeat' in top level"),
    ("axes: {np: [1]}\nfixed: {data: {store: /data/store}}\n", "--store needs --split FILE"),
    ("axes: {np: [1]\n", "not valid YAML"),
])
def test_spec_check_fails_on_a_bad_spec(tmp_path, body, said):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    problems = spec_problems([path])
    assert len(problems) == 1 and said in problems[0], problems


def test_gpu_example_emits_slurm_arrays_with_four_gpus_per_node(tmp_path):
    """What docs/clusters.md tells a user to run on the GPU example: np 8 spans two 4-GPU nodes."""
    from harness.sweep.emit import EmitOptions, emit
    from harness.sweep.spec import load_spec

    spec = load_spec(ROOT / "examples" / "sweep-gpu-cluster.yaml")
    written = emit(spec, tmp_path / "jobs", EmitOptions(scheduler="slurm", gpus_per_node=4, cpus_per_task=8))
    assert sorted(k for k in written if k.startswith("run-")) == ["run-np1", "run-np2", "run-np4", "run-np8"]
    np8 = written["run-np8"].read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks=8", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --array=0-2"):
        assert line in np8, line
    import json

    config = json.loads(next((tmp_path / "jobs" / "configs").glob("*.json")).read_text())
    assert config["data"]["crop"] == [128, 128, 128] and config["model"]["base_filters"] == 32
    assert config["train"]["amp"] is True and config["train"]["benchmark"] is True and config["train"]["backend"] == "horovod"


# ---------------------------------------------------------------- wording


LOCAL_CONTEXT = re.compile(r"\bthis machine\b|\bhere\b|\bissue \d|\b\d/[45]\b", re.IGNORECASE)


def test_user_docs_do_not_speak_of_a_particular_session():
    """A reader's machine is not the one a figure was measured on: no "here", "this machine" or issue numbers."""
    found = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in LOCAL_CONTEXT.finditer(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} in: {line.strip()[:120]}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- reference tables that follow the code


def test_the_spec_reference_names_every_key_and_run_setting():
    """docs/clusters.md lists every key the spec parser accepts and every run setting a spec's `fixed` may hold."""
    from dataclasses import fields

    from harness.sweep.spec import AXES, SECTIONS, TOP_KEYS, TRANSFER_KEYS

    page = (ROOT / "docs" / "clusters.md").read_text()
    missing = [f"`{k}`" for k in (*TOP_KEYS, *AXES, *TRANSFER_KEYS) if f"`{k}`" not in page]
    missing += [f"`{s}.{f.name}`" for s, kind in SECTIONS.items() for f in fields(kind) if f"`{s}.{f.name}`" not in page]
    assert not missing, "docs/clusters.md does not describe: " + ", ".join(missing)


def test_the_results_page_names_every_fixed_column():
    from analysis.records import PHASES
    from analysis.tables import MMD_COLUMNS, SCALING_COLUMNS

    page = (ROOT / "docs" / "results.md").read_text()
    columns = (*SCALING_COLUMNS, "kind", *PHASES, *MMD_COLUMNS, "allreduce_ms", "exposed_ms", "predicted / measured")
    missing = [c for c in columns if f"`{c}`" not in page]
    assert not missing, "docs/results.md does not explain: " + ", ".join(missing)
