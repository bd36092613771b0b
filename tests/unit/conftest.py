"""Make the lab's module_utils importable both as plain ``kube_proxy`` (the pure logic)
and as ``ansible.module_utils.kube_proxy`` (how library/kube_proxy.py imports it)."""

import sys
from pathlib import Path

import ansible.module_utils
import pytest
from ansible.module_utils import basic

REPO = Path(__file__).resolve().parents[2]
MODULE_UTILS = REPO / "module_utils"

sys.path.insert(0, str(MODULE_UTILS))
ansible.module_utils.__path__.append(str(MODULE_UTILS))

LIBRARY = REPO / "library"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = Path(__file__).resolve().parent / "golden"


class ModuleExit(Exception):
    """A module's exit_json or fail_json, caught: ``failed`` and the ``result`` it returned."""

    def __init__(self, failed, result):
        super().__init__(result.get("msg", ""))
        self.failed = failed
        self.result = result


@pytest.fixture
def capture_module_exit(monkeypatch):
    """Make a module's main() raise ModuleExit instead of printing JSON and exiting."""
    def exit_json(self, **result):
        raise ModuleExit(False, result)

    def fail_json(self, msg, **result):
        raise ModuleExit(True, dict(result, msg=msg))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
