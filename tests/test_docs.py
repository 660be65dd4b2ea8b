"""README.md and docs/*.md stay true to the repository: every relative link reaches a file (and
an `#anchor` a heading of it), every `python -m runner ...` command in a fenced code block is
one the CLI accepts, every job file they name exists, and the README's set-up commands are the
ones .ci/run runs. Each checker is also shown a planted mistake, so that a checker that
silently checks nothing fails too."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.cli.main import build_parser
from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- Markdown, as much of it as the checks need ---------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    lang: str
    first_line: int  # 1-based line number of the block's first content line
    lines: list[str]


def split_fences(text: str) -> tuple[list[str], list[Block]]:
    """(the lines outside fenced code blocks, blanked inside them; the fenced blocks)."""
    prose: list[str] = []
    blocks: list[Block] = []
    current: Block | None = None
    closer = ""
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if current is None and match:
            closer = match.group(1)
            current = Block(match.group(2).lower(), number + 1, [])
            prose.append("")
        elif current is not None and line.strip().startswith(closer) and not line.strip(closer[0]):
            blocks.append(current)
            current = None
            prose.append("")
        elif current is not None:
            current.lines.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert current is None, (
        f"a fenced code block opened at line {current.first_line - 1} never closes"
    )
    return prose, blocks


def without_inline_code(line: str) -> str:
    return re.sub(r"(`+)(?:(?!\1).)+\1", "", line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped
    (letters, digits, marks, `_` and `-` stay), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(
        ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "M", "N")
    )
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose, _ = split_fences(text)
    seen: dict[str, int] = {}
    found = set()
    for line in prose:
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")  # GitHub numbers repeats
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every inline link and image outside code."""
    prose, _ = split_fences(text)
    for number, line in enumerate(prose, start=1):
        for match in LINK.finditer(without_inline_code(line)):
            yield number, match.group(1)


def broken_links(path: Path, text: str) -> list[str]:
    problems = []
    for number, target in links(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # https:, mailto:: not a file of this repository
        file_part, _, anchor = target.partition("#")
        where = f"{doc_id(path)}:{number}: {target}"
        if not file_part:
            if anchor not in anchors(text):
                problems.append(f"{where}: no heading with the anchor #{anchor} here")
            continue
        dest = (path.parent / file_part).resolve()
        if not dest.is_relative_to(REPO):
            problems.append(f"{where}: leaves the repository (breaks in a clone and on GitHub)")
            continue
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {dest.name}")
    return problems


# --- Commands ---------------------------------------------------------------------------------

RUNNER = "python -m runner"
OUTPUT_BLOCKS = {"text", "output"}  # fenced blocks that show output, not commands
JOB_FILE = re.compile(r"(?<![\w/.-])(?:/opt/cpusweep/)?(jobs/[\w.-]+\.toml)")


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """A block's commands: shell prompts dropped, lines ending in a backslash joined to the
    next, and a usage synopsis's indented `[--option ...]` lines joined to the line above."""
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block.lines):
        line = re.sub(r"^\s*\$ ", "", raw)
        if pending and pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1] + " " + line.strip())
            continue
        if pending and re.match(r"^\s+\[", line):
            pending = (pending[0], pending[1] + " " + line.strip())
            continue
        if pending:
            yield pending
        pending = (block.first_line + offset, line.rstrip())
    if pending:
        yield pending


def runner_commands(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command) of every `python -m runner ...` in a fenced code block: the part
    of a shell line from `python -m runner` to the end of that command (`&&`, `;`, a pipe)."""
    _, blocks = split_fences(text)
    for block in blocks:
        if block.lang in OUTPUT_BLOCKS:
            continue  # what a command printed (a quoted hint in it is not a command to run)
        for number, line in logical_lines(block):
            for segment in re.split(r"\s(?:&&|\|\||;|\|)\s", line):
                start = segment.find(RUNNER)
                if start >= 0:
                    yield number, segment[start:].strip()


def is_synopsis(words: list[str]) -> bool:
    """A usage line (`[--flag X]`, `ray|serial`, `NAME...`), not a command to paste."""
    return any(w.startswith("[") or w.endswith("]") or "|" in w or w.endswith("...") for w in words)


def subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for word in path:
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[word]
    return parser


def check_synopsis(words: list[str]) -> list[str]:
    """Every `--option` of a usage line is an option of its verb."""
    parser = build_parser()
    path = [w for w in words[:2] if re.fullmatch(r"[a-z]+", w)]
    if path[:1] != ["data"]:
        path = path[:1]
    try:
        verb = subparser(parser, path)
    except (KeyError, ValueError):
        return [f"no verb {' '.join(path)!r}"]
    if any(isinstance(a, argparse._SubParsersAction) for a in verb._actions):
        return [f"{' '.join(path)!r} needs a sub-verb"]
    options = {s for a in verb._actions for s in a.option_strings}
    flags = {f.strip("[]") for f in words if f.strip("[]").startswith("--")}
    return [f"{' '.join(path)} has no option {flag}" for flag in sorted(flags - options)]


def check_command(command: str) -> list[str]:
    """What is wrong with one `python -m runner ...` command ([] when nothing)."""
    words = shlex.split(command, comments=True)
    args = words[3:]
    if "..." in args:
        # An elided command ("the same `python -m runner slurm ... --submit`"): the words left
        # out are the reader's own, so there is nothing whole to parse.
        return []
    if is_synopsis(args):
        return check_synopsis(args)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            parsed = build_parser().parse_args(args)
    except SystemExit as stop:
        if stop.code in (0, None):
            return []  # --help
        message = errors.getvalue().strip().splitlines()
        return [message[-1] if message else f"the parser exits with {stop.code}"]
    job = getattr(parsed, "job", None)
    if isinstance(job, str):
        match = JOB_FILE.fullmatch(job)
        if match and not (REPO / match.group(1)).is_file():
            return [f"no job file {match.group(1)}"]
        if not match and not re.fullmatch(r"[A-Z_]+\.toml", job):
            # Only the repository's jobs/ (or the image's copy under /opt/cpusweep) can be
            # checked; any other job file must be written as a placeholder such as JOB.toml.
            return [f"job file {job!r} is neither in jobs/ nor a placeholder like JOB.toml"]
    return []


def bad_commands(path: Path, text: str) -> list[str]:
    return [
        f"{doc_id(path)}:{number}: `{command}`: {problem}"
        for number, command in runner_commands(text)
        for problem in check_command(command)
    ]


def missing_job_files(path: Path, text: str) -> list[str]:
    return [
        f"{doc_id(path)}: {name}"
        for name in sorted(set(JOB_FILE.findall(text)))
        if not (REPO / name).is_file()
    ]


# --- The tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", doc_files(), ids=doc_id)
def test_relative_links_reach_files_and_headings(path: Path) -> None:
    assert broken_links(path, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", doc_files(), ids=doc_id)
def test_runner_commands_are_accepted_by_the_cli(path: Path) -> None:
    assert bad_commands(path, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", doc_files(), ids=doc_id)
def test_named_job_files_exist(path: Path) -> None:
    assert missing_job_files(path, path.read_text(encoding="utf-8")) == []


def test_the_checks_see_the_docs_commands_and_links() -> None:
    """The docs do have what the checks look at: a regex gone wrong would pass vacuously."""
    readme = README.read_text(encoding="utf-8")
    assert len(list(runner_commands(readme))) >= 5
    assert len([t for _, t in links(readme) if t.startswith("docs/")]) >= 8
    everything = [p.read_text(encoding="utf-8") for p in doc_files()]
    assert sum(len(list(runner_commands(t))) for t in everything) >= 25
    assert any("#" in t for text in everything for _, t in links(text))  # anchors are checked


def test_planted_broken_links_are_caught(tmp_path: Path) -> None:
    page = DOCS / "planted.md"  # never written: only its folder matters
    text = """# Planted

[fine](findings.md) and [fine too](../README.md#set-up), [here](#planted),
[gone](no-such-file.md), [bad anchor](findings.md#no-such-heading), [up](../../outside.md),
[self](#nowhere), [web](https://example.org/x.md), `[code](not-a-link.md)`

```
[in a block](not-a-link-either.md)
```
"""
    problems = broken_links(page, text)
    assert [p.split(": ")[1] for p in problems] == [
        "no-such-file.md",
        "findings.md#no-such-heading",
        "../../outside.md",
        "#nowhere",
    ]


def test_github_anchors() -> None:
    text = (
        "# The results folder\n## The report's Parquet files\n### epochs.parquet\n"
        "## Checkpoints: resuming a cell mid-way\n## `submit`\n## Notes\n## Notes\n"
        "```\n# not a heading\n```\n"
    )
    assert anchors(text) == {
        "the-results-folder",
        "the-reports-parquet-files",
        "epochsparquet",
        "checkpoints-resuming-a-cell-mid-way",
        "submit",
        "notes",
        "notes-1",
    }


@pytest.mark.parametrize(
    "command",
    [
        "python -m runner submit jobs/quickstart.toml --no-such-flag",
        "python -m runner sumbit jobs/quickstart.toml",
        "python -m runner submit jobs/no_such_job.toml",
        "python -m runner submit my-own.toml",
        "python -m runner plan jobs/quickstart.toml --cpus many",
        "python -m runner export results/quickstart --to wandb",
        "python -m runner data",
        "python -m runner report DIR [--out DIR] [--no-such-option]",
        "python -m runner frobnicate DIR [--out DIR]",
    ],
)
def test_planted_bad_commands_are_caught(command: str) -> None:
    assert check_command(command) != []


def test_commands_are_found_in_shell_lines_and_blocks() -> None:
    text = """```bash
$ python3 -m venv .venv && . .venv/bin/activate && python -m runner submit jobs/quickstart.toml
docker compose -f docker/compose.yaml exec head \\
    python -m runner submit /opt/cpusweep/jobs/quickstart.toml --address auto  # a comment
python -m runner status results/quickstart | less
python -m runner report --help
```

```
python -m runner submit JOB.toml [--results DIR] [--cpus N]
                                 [--executor ray|serial]
```

```text
4 cells did not learn: `python -m runner status results/quickstart` lists them.
```

`python -m runner not in a block`
"""
    assert [c for _, c in runner_commands(text)] == [
        "python -m runner submit jobs/quickstart.toml",
        "python -m runner submit /opt/cpusweep/jobs/quickstart.toml --address auto  # a comment",
        "python -m runner status results/quickstart",
        "python -m runner report --help",
        "python -m runner submit JOB.toml [--results DIR] [--cpus N] [--executor ray|serial]",
    ]
    assert all(check_command(c) == [] for _, c in runner_commands(text))


def ci_line(pattern: str) -> str:
    [line] = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if re.search(pattern, line) and not line.lstrip().startswith("#")
    ]
    return line


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section ## {heading}"
    return match.group(1)


def test_readme_setup_is_the_two_commands_ci_runs() -> None:
    """.ci/run installs exactly as the README says and runs the README's test command; the
    README's set-up section shows those two commands and no other."""
    install = ci_line(r"^python3 -m venv \.venv ")
    tests = ci_line(r"pip install -e '\.\[test\]'")
    _, blocks = split_fences(section(README.read_text(encoding="utf-8"), "Set-up"))
    commands = [b.lines for b in blocks if b.lang in ("bash", "sh", "shell", "console")]
    assert commands == [
        [f"{install} && python -m runner submit jobs/quickstart.toml"],
        [tests],
    ]
