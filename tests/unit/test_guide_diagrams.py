"""The Markdown's Mermaid diagrams: every ```mermaid block of docs/*.md and README.md parses
with mermaid itself (tools/mermaid-check, under Node.js), a broken one is refused by its line,
and the Chinese guide draws the English guide's diagrams, of the same types in the same order."""

import glob
import json
import os
import shutil
import subprocess
from collections import namedtuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKER = os.path.join(ROOT, "tools", "mermaid-check")
INSTALL_HINT = ("run `make unit` (or `make test`), which installs Node.js and tools/mermaid-check's pinned packages;"
                " the packages alone: `make tools/mermaid-check/node_modules/.package-lock-installed`")

Run = namedtuple("Run", "returncode results")


def where(result):
    return "%s:%d (the ```mermaid fence; mermaid's line 1 is the line after it)" % (result["file"], result["line"])


def run_checker(paths):
    """One node process over all paths: its results, one per block, in file order."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("no node on PATH: " + INSTALL_HINT)
    with open(os.path.join(CHECKER, "package.json"), encoding="utf-8") as handle:
        pins = json.load(handle)["dependencies"]
    for name, version in pins.items():
        installed = os.path.join(CHECKER, "node_modules", name, "package.json")
        if not os.path.exists(installed):
            pytest.fail("%s is not installed in tools/mermaid-check: %s" % (name, INSTALL_HINT))
        with open(installed, encoding="utf-8") as handle:
            found = json.load(handle)["version"]
        if found != version:
            pytest.fail("tools/mermaid-check has %s %s, package.json pins %s: %s" % (name, found, version, INSTALL_HINT))
    process = subprocess.run([node, os.path.join(CHECKER, "check.mjs"), *paths], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, check=False)
    results = [json.loads(line) for line in process.stdout.splitlines()]
    # Exit status 1 with every block parsed is node itself failing (a missing module, a crash).
    if process.returncode not in (0, 1) or (process.returncode == 1 and all(result["ok"] for result in results)):
        pytest.fail("tools/mermaid-check/check.mjs did not run (exit %d): %s" % (process.returncode, process.stderr))
    return Run(process.returncode, results)


@pytest.fixture(scope="module")
def project():
    paths = sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return run_checker(paths + ["README.md"])


def types_in(run, path):
    return [result["type"] for result in run.results if result["file"] == path]


def drawn(run, path):
    return ", ".join("%s at line %d" % (result["type"], result["line"]) for result in run.results
                     if result["file"] == path) or "nothing"


def test_every_diagram_parses(project):
    failures = ["%s: %s" % (where(result), result["error"]) for result in project.results if not result["ok"]]
    assert not failures, "mermaid refused:\n" + "\n".join(failures)
    assert project.returncode == 0
    assert types_in(project, "docs/guide.md"), "no ```mermaid block found in docs/guide.md"


def test_a_broken_diagram_is_refused_by_its_line(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("# Broken\n\n```mermaid\nflowchart LR\n    a --> b\n```\n\n"
                    "```mermaid\nsequenceDiagram\n    客户端->>: 没有接收方\n```\n", encoding="utf-8")
    run = run_checker([str(page)])
    assert run.returncode == 1
    good, broken = run.results
    assert (good["line"], good["type"], good["ok"]) == (3, "flowchart-v2", True)
    assert (broken["line"], broken["type"], broken["ok"]) == (8, "sequence", False)
    assert broken["error"].startswith("Parse error on line 2:"), broken["error"]


def test_the_chinese_guide_draws_the_same_diagrams(project):
    assert types_in(project, "docs/guide.zh-CN.md") == types_in(project, "docs/guide.md"), (
        "docs/guide.md draws %s; docs/guide.zh-CN.md draws %s"
        % (drawn(project, "docs/guide.md"), drawn(project, "docs/guide.zh-CN.md")))
