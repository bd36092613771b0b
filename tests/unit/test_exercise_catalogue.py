"""roles/lab_exercise/vars/main.yml: every exercise has, for every mode it runs in (and in a
lab of two nodes or more where it has `cluster` entries), what its check step prints: what
break changed, the symptom and why, the command that shows the change, and the role fix
re-runs; its templates parse. The molecule tests run one exercise's check step in each mode
(test_exercises.CHECKED) and every exercise's break and fix."""

import jinja2
import pytest
import yaml

from conftest import REPO

ROLE = REPO / "roles" / "lab_exercise"
CATALOGUE = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["lab_exercise__catalogue"]
MODES = {"iptables", "ipvs", "nftables"}
STEPS = ("break", "check", "fix")


def views(exercise):
    """(label, entry) for the exercise as one node sees it and, with cluster entries, as a lab of
    two nodes or more does (tasks/main.yml's lab_exercise__exercise: cluster's keys win)."""
    entry = CATALOGUE[exercise]
    yield "one node", entry
    if "cluster" in entry:
        yield "cluster", dict(entry, **entry["cluster"])


def templates(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from templates(item)
    elif isinstance(value, list):
        for item in value:
            yield from templates(item)


@pytest.mark.parametrize("exercise", sorted(CATALOGUE))
def test_every_mode_of_an_exercise_has_what_check_prints(exercise):
    for label, entry in views(exercise):
        assert entry["modes"] and set(entry["modes"]) <= MODES, (exercise, label)
        assert (REPO / "roles" / entry["fix_role"] / "tasks" / "main.yml").is_file(), (exercise, entry["fix_role"])
        assert isinstance(entry["broken"], str) and entry["broken"].strip(), (exercise, label)
        for mode in entry["modes"]:
            text = entry["text"].get(mode, entry["text"].get("any"))
            assert text and all(isinstance(text.get(key), str) and text[key].strip() for key in ("symptom", "why")), (
                exercise, label, mode)
            look = entry["look"].get(mode, entry["look"].get("any"))
            assert isinstance(look, list) and look and all(isinstance(word, str) for word in look), (exercise, label, mode)


@pytest.mark.parametrize("exercise", sorted(CATALOGUE))
def test_an_exercise_s_templates_parse(exercise):
    environment = jinja2.Environment()
    for text in templates(CATALOGUE[exercise]):
        environment.parse(text)


@pytest.mark.parametrize("exercise", sorted(name for name, entry in CATALOGUE.items() if entry.get("own_steps")))
def test_an_exercise_with_steps_of_its_own_has_each(exercise):
    for step in STEPS:
        assert (ROLE / "tasks" / ("%s_%s.yml" % (exercise, step))).is_file(), (exercise, step)
