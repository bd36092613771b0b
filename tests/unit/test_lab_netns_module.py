"""library/lab_netns.py main(): reads once per namespace, applies once per namespace (run_command patched)."""

import importlib.util
import json

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from conftest import LIBRARY, ModuleExit
from test_lab_netns import IP_BATCH_OUTPUT, NODE, POD1

spec = importlib.util.spec_from_file_location("lab_netns_module", LIBRARY / "lab_netns.py")
lab_netns_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_netns_module)


pytestmark = pytest.mark.usefixtures("capture_module_exit")


class FakeHost:
    """Answers run_command like a host whose namespaces are ``existing``, each read as ``batch``."""

    def __init__(self, existing=(), batch=IP_BATCH_OUTPUT, fail=None):
        self.existing, self.batch, self.fail, self.calls = list(existing), batch, fail, []

    def __call__(self, argv, data=None, binary_data=False, **_kwargs):
        self.calls.append((argv, data))
        if self.fail and self.fail in " ".join(argv) + " " + (data or ""):
            return 2, "", "RTNETLINK answers: File exists\n"
        if argv[:3] == ["ip", "-json", "netns"]:
            return 0, json.dumps([dict(name=name) for name in self.existing]), ""
        if "-batch" in argv and data == lab_netns_module.READ_BATCH:
            return 0, self.batch, ""
        if argv[-1:] == ["net.ipv4.ip_forward"]:
            return 0, "net.ipv4.ip_forward = 0\n", ""
        return 0, "", ""

    def writes(self):
        return [(argv, data) for argv, data in self.calls
                if argv[:3] != ["ip", "-json", "netns"] and data != lab_netns_module.READ_BATCH
                and argv[-2:] != ["sysctl", "net.ipv4.ip_forward"]]


def run(monkeypatch, args, host, check_mode=False, diff=False):
    monkeypatch.setattr(basic.AnsibleModule, "run_command", host)
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with patch_module_args(args):
        with pytest.raises(ModuleExit) as caught:
            lab_netns_module.main()
    return caught.value


def test_an_empty_host_is_built_in_one_process_per_namespace(monkeypatch):
    host = FakeHost()
    outcome = run(monkeypatch, dict(namespaces=[NODE, POD1]), host)
    assert not outcome.failed and outcome.result["changed"]
    assert [argv for argv, _data in host.writes()] == [
        ["ip", "-batch", "-"], ["ip", "-n", "lab-node", "-batch", "-"], ["ip", "-n", "lab-pod1", "-batch", "-"],
        ["ip", "netns", "exec", "lab-node", "sysctl", "-w", "net.ipv4.ip_forward=1"]]
    assert outcome.result["created"] == ["lab-node", "lab-pod1"]
    assert "ip -n lab-node link add veth-pod1 type veth peer name eth0 netns lab-pod1" in outcome.result["commands"]


def test_check_mode_reports_the_commands_and_runs_only_readers(monkeypatch):
    host = FakeHost(existing=["lab-node"])
    outcome = run(monkeypatch, dict(namespaces=[NODE, POD1]), host, check_mode=True, diff=True)
    assert outcome.result["changed"] and host.writes() == []
    assert outcome.result["commands"][0] == "ip netns add lab-pod1"
    pod_diff = next(diff for diff in outcome.result["diff"] if diff["after_header"] == "lab-pod1 (after)")
    assert pod_diff["before"] == "" and "link eth0 up 10.0.0.2/24" in pod_diff["after"]


def test_every_command_is_an_argv_list_inside_a_namespace_or_a_netns_change(monkeypatch):
    host = FakeHost()
    run(monkeypatch, dict(namespaces=[NODE, POD1]), host)
    for argv, data in host.calls:
        assert isinstance(argv, list)
        inside = argv[:2] == ["ip", "-n"] or argv[:3] == ["ip", "netns", "exec"]
        netns_only = argv in (["ip", "-json", "netns", "list"], ["ip", "-batch", "-"]) and all(
            line.startswith("netns ") for line in (data or "").splitlines())
        assert inside or netns_only, argv


def test_a_failing_batch_names_its_command(monkeypatch):
    outcome = run(monkeypatch, dict(namespaces=[NODE, POD1]), FakeHost(fail="link add cni0"))
    assert outcome.failed
    assert outcome.result["msg"].startswith("ip -n lab-node -batch - failed: RTNETLINK answers: File exists")
    assert "link add cni0 type bridge" in outcome.result["stdin"]


def test_a_bad_declaration_fails_before_any_command(monkeypatch):
    host = FakeHost()
    outcome = run(monkeypatch, dict(namespaces=[dict(name="lab-node", links=[dict(name="eth0")])]), host)
    assert outcome.failed and outcome.result["field"] == "namespaces[0].links[0]"
    assert host.calls == []


def test_absent_deletes_the_declared_namespaces_that_exist(monkeypatch):
    host = FakeHost(existing=["lab-node", "lab-pod1"])
    outcome = run(monkeypatch, dict(state="absent", namespaces=[dict(name="lab-pod1"), dict(name="lab-pod9")]), host)
    assert outcome.result["deleted"] == ["lab-pod1"]
    assert host.writes() == [(["ip", "-batch", "-"], "netns delete lab-pod1\n")]


def test_documentation_matches_argument_spec():
    import yaml  # pylint: disable=import-outside-toplevel

    def documented(options):
        return dict((name, sorted(documented(option.get("suboptions", {})).items()) if option.get("suboptions")
                     else option.get("type")) for name, option in options.items())

    def specified(options):
        return dict((name, sorted(specified(option.get("options", {})).items()) if option.get("options")
                     else option.get("type")) for name, option in options.items())

    doc = yaml.safe_load(lab_netns_module.DOCUMENTATION)["options"]
    assert documented(doc) == specified(lab_netns_module.ARGUMENT_SPEC)
