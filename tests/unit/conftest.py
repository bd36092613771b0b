"""Make the lab's module_utils importable both as plain ``kube_proxy`` (the pure logic)
and as ``ansible.module_utils.kube_proxy`` (how library/kube_proxy.py imports it)."""

import sys
from pathlib import Path

import ansible.module_utils

REPO = Path(__file__).resolve().parents[2]
MODULE_UTILS = REPO / "module_utils"

sys.path.insert(0, str(MODULE_UTILS))
ansible.module_utils.__path__.append(str(MODULE_UTILS))

LIBRARY = REPO / "library"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = Path(__file__).resolve().parent / "golden"
