"""The lab guide's commands, read from docs/guide*.md, so tests can run them as printed.

In the guide, every ```sh block is preceded by a marker naming the modes whose lab it runs in,

    <!-- run: iptables nftables -->

and a ```text block preceded by `<!-- expect -->` holds lines the last command of the run
block before it must print (each line, with runs of blank space made one, must be part of
one output line). Other ```text blocks are examples and are not checked.
"""

import re
from collections import namedtuple

MODES = ("iptables", "ipvs", "nftables")
MARKER = re.compile(r"^<!-- (?P<kind>run|expect)(?::(?P<modes>[^>]*))? -->$")
FENCE = re.compile(r"^```(?P<language>\w*)$")
# What a guide command may start with: the lab's own entry points, or a probe inside one of
# the lab's namespaces. Nothing in the guide may act on the host's own network.
ALLOWED = re.compile(r"^(make |ansible-playbook |ip netns exec lab-|ip -n lab-|ip netns list$)")

Step = namedtuple("Step", "line modes commands expect")


class GuideError(ValueError):
    """The guide breaks the rules above; the message names the line."""


def _fenced(lines, start):
    """(language, body lines, index after the closing fence) of the block opening at start."""
    opening = FENCE.match(lines[start]) if start < len(lines) else None
    if not opening:
        raise GuideError("line %d: a marker must be followed by a fenced block" % start)
    for end in range(start + 1, len(lines)):
        if lines[end] == "```":
            return opening["language"], lines[start + 1:end], end + 1
    raise GuideError("line %d: the block is never closed" % (start + 1))


def commands(body):
    """The shell commands of a run block: continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in body:
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.lstrip().startswith("#"):
            joined.append(line.strip())
    return joined


def steps(text):
    """The guide's run blocks, in order, each with the expected lines that follow it."""
    lines = text.splitlines()
    found, index = [], 0
    while index < len(lines):
        marker = MARKER.match(lines[index])
        opening = FENCE.match(lines[index])
        if marker:
            language, body, after = _fenced(lines, index + 1)
            if marker["kind"] == "run":
                modes = tuple((marker["modes"] or "").split())
                unknown = set(modes) - set(MODES)
                if language != "sh" or not modes or unknown:
                    raise GuideError("line %d: `<!-- run: MODES -->` needs a ```sh block and modes from %s (got %s %s)"
                                     % (index + 1, ", ".join(MODES), language, " ".join(modes)))
                found.append(Step(index + 1, modes, commands(body), []))
            else:
                if language != "text" or not found or found[-1].expect:
                    raise GuideError("line %d: `<!-- expect -->` needs a ```text block after a run block" % (index + 1))
                found[-1].expect.extend(line for line in body if line.strip())
            index = after
        elif opening:
            if opening["language"] == "sh":
                raise GuideError("line %d: a ```sh block without a `<!-- run: MODES -->` marker" % (index + 1))
            index = _fenced(lines, index)[2]
        else:
            index += 1
    for step in found:
        for command in step.commands:
            if not ALLOWED.match(command):
                raise GuideError("line %d: `%s` is not a lab command (make, ansible-playbook, ip netns exec lab-…, ip -n lab-…)"
                                 % (step.line, command))
    return found


def squeeze(line):
    return " ".join(line.split())


def missing(expect, output):
    """The expected lines no line of output contains."""
    printed = [squeeze(line) for line in output.splitlines()]
    return [line for line in expect if not any(squeeze(line) in seen for seen in printed)]
