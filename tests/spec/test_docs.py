"""The README and docs/ hold together: links resolve, cited files exist, shown flags exist.

Every flag in a docs code block that runs ``anglerank CMD`` must be one of that command's
options (the options its ``--help`` lists), and every flag given to a repository script
(``python examples/...``, ``python benchmarks/...``) must be in that script's ``--help``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import typer

from anglerank.cli import app
from helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CITED = re.compile(r"`((?:anglerank|benchmarks|examples|tests|docs)/[\w./-]+\.(?:py|sh|md|json|png|jsonl))`")
FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.DOTALL)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", path.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.name}: no heading for #{anchor} in {dest.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_file_exists(doc):
    text = doc.read_text()
    for cited in CITED.findall(text):
        assert (ROOT / cited).exists(), f"{doc.name} cites {cited}, which is not in the repository"
    for name in set(re.findall(r"\b([A-Z][A-Za-z_]+\.md)\b", text)):
        assert list(ROOT.rglob(name)), f"{doc.name} cites {name}, which is not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_speak_of_the_product_only(doc):
    text = doc.read_text()
    bad = re.findall(r"(?i)\bissue \d+|lent to this|this task\b|\bsessions?\b|the `run` tool", text)
    assert not bad, f"{doc.name}: {bad}"


def _commands(block: str):
    """(argv0 words, flags) for each command line of a shell block, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        for part in re.split(r"&&|;|\|", line):
            words = part.split()
            if words:
                yield words, FLAG.findall(part)


@lru_cache(maxsize=None)
def _cli_options(command: str) -> frozenset:
    group = typer.main.get_command(app)
    cmd = group.commands.get(command)
    assert cmd is not None, f"docs show `anglerank {command}`, which is not a command"
    return frozenset(o for p in cmd.params for o in (*p.opts, *p.secondary_opts)) | {"--help"}


@lru_cache(maxsize=None)
def _script_help(script: str) -> str:
    p = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert p.returncode == 0, f"{script} --help failed: {p.stderr[-500:]}"
    return p.stdout


def _shown_commands():
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text()):
            for words, flags in _commands(block):
                if flags:
                    yield doc, words, flags


def test_every_flag_shown_exists():
    checked = 0
    for doc, words, flags in _shown_commands():
        if words[0] == "anglerank" and len(words) > 1:
            missing = set(flags) - _cli_options(words[1])
            assert not missing, f"{doc.name}: `anglerank {words[1]}` has no {sorted(missing)}"
            checked += 1
        elif Path(words[0]).name.startswith("python") and len(words) > 1 and re.match(r"(examples|benchmarks)/.+\.py$", words[1]):
            help_text = _script_help(words[1])
            missing = [f for f in flags if f not in help_text]
            assert not missing, f"{doc.name}: {words[1]} has no {missing}"
            checked += 1
    assert checked > 20  # the docs show many commands: a parser that finds none is broken
