"""docs/guide.md as a student runs it: every command block of the scenario's mode, in the
guide's order, must succeed and print what the guide says it prints (guide.py reads the
blocks). The guide ends by tearing the lab down; the lab is built again afterwards, as
converge built it, so the tests after this one see the same lab.
"""

import os
import subprocess

import guide
from conftest import PROJECT, play, project_env

GUIDE = os.path.join(PROJECT, "docs", "guide.md")


def shell(command):
    """bash -c COMMAND in the project, as a student types it (a guide line: make ..., ip netns
    exec ..., ansible-playbook ...); (exit status, stdout, stderr)."""
    result = subprocess.run(["bash", "-c", command], cwd=PROJECT, env=project_env(), capture_output=True, text=True, check=False)
    return result.returncode, result.stdout, result.stderr


def test_the_guide_runs_as_printed(lab):
    with open(GUIDE, encoding="utf-8") as handle:
        steps = [step for step in guide.steps(handle.read()) if lab["mode"] in step.modes]
    assert steps, "the guide has no commands for mode %s" % lab["mode"]
    rebuild = True
    try:
        for step in steps:
            for command in step.commands:
                print("guide line %d: %s" % (step.line, command))
                status, output, errors = shell(command)
                assert status == 0, "guide line %d: `%s` exited %d:\n%s" % (
                    step.line, command, status, output[-3000:] + errors[-2000:])
            absent = guide.missing(step.expect, output)
            assert not absent, "guide line %d: `%s` did not print:\n%s\nIt printed:\n%s" % (
                step.line, step.commands[-1], "\n".join(absent), output[-4000:])
        rebuild = any(command.startswith("make teardown") for step in steps for command in step.commands)
    finally:
        if rebuild:
            play("lab.yml", mode=lab["mode"])
