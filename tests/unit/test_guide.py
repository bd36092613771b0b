"""The guide's text: every command block is marked, runs only lab commands, and the
Chinese guide runs exactly the English guide's commands and expects the same output, so a
test that runs one (molecule/shared/tests/test_guide.py) vouches for both."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "molecule", "shared", "tests"))

import guide  # noqa: E402  (found through the path above)


def read(name):
    with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as handle:
        return handle.read()


def test_every_mode_has_commands():
    steps = guide.steps(read("guide.md"))
    for mode in guide.MODES:
        assert [step for step in steps if mode in step.modes], mode


def test_the_chinese_guide_runs_the_same_commands():
    english = [(step.modes, step.commands, step.expect) for step in guide.steps(read("guide.md"))]
    chinese = [(step.modes, step.commands, step.expect) for step in guide.steps(read("guide.zh-CN.md"))]
    assert chinese == english


def test_commands_join_continuations_and_drop_comments():
    assert guide.commands(["make lab \\", "  MODE=ipvs", "# a comment", "", "ip netns list"]) == [
        "make lab   MODE=ipvs", "ip netns list"]


@pytest.mark.parametrize("text, message", [
    ("```sh\nmake lab\n```\n", "without a `<!-- run: MODES -->` marker"),
    ("<!-- run: iptables -->\n```sh\niptables -t nat -F\n```\n", "is not a lab command"),
    ("<!-- run: ipvs windows -->\n```sh\nmake lab\n```\n", "modes from"),
    ("<!-- expect -->\n```text\nx\n```\n", "after a run block"),
    ("<!-- run: iptables -->\n```sh\nmake lab\n", "never closed"),
])
def test_bad_guides_are_refused(text, message):
    with pytest.raises(guide.GuideError, match=message):
        guide.steps(text)


def test_expected_lines_match_inside_output_lines_whatever_the_spacing():
    output = "TCP  10.96.0.10:80 rr\n  -> 10.0.0.2:8080      Masq    1      0          0\n"
    assert guide.missing(["-> 10.0.0.2:8080 Masq 1", "TCP 10.96.0.10:80 rr"], output) == []
    assert guide.missing(["-> 10.0.0.5:8080 Masq 1"], output) == ["-> 10.0.0.5:8080 Masq 1"]
