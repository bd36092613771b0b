"""library/lab_netns.py main(): reads once per namespace, applies once per namespace (run_command patched)."""

import importlib.util
import json
import signal

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from conftest import LIBRARY, ModuleExit
from test_lab_netns import BRIDGE_PORTS, IP_BATCH_OUTPUT, NETNS_IDS, NODE, POD1

spec = importlib.util.spec_from_file_location("lab_netns_module", LIBRARY / "lab_netns.py")
lab_netns_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_netns_module)


pytestmark = pytest.mark.usefixtures("capture_module_exit")


class FakeHost:
    """Answers run_command like a host whose namespaces are ``existing``, each read as ``batch``."""

    def __init__(self, existing=(), batch=IP_BATCH_OUTPUT, fail=None, pids=None):
        self.existing, self.batch, self.fail, self.calls = list(existing), batch, fail, []
        self.pids = pids or {}

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
        if argv[-2:-1] == ["master"]:
            if argv[-1] != "cni0":
                return 1, "", 'Device "%s" does not exist.\n' % argv[-1]
            return 0, BRIDGE_PORTS, ""
        if argv[-2:] == ["netns", "list-id"]:
            return 0, NETNS_IDS, ""
        if argv[:3] == ["ip", "netns", "pids"]:
            return 0, "".join("%d\n" % pid for pid in self.pids.get(argv[3], [])), ""
        return 0, "", ""

    def writes(self):
        return [(argv, data) for argv, data in self.calls
                if argv[:3] not in (["ip", "-json", "netns"], ["ip", "netns", "pids"])
                and data != lab_netns_module.READ_BATCH and argv[-2:] != ["sysctl", "net.ipv4.ip_forward"]]


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


def test_query_returns_the_links_read_and_changes_nothing(monkeypatch):
    host = FakeHost(existing=["lab-node"])
    outcome = run(monkeypatch, dict(state="query", namespaces=[dict(name="lab-node"), dict(name="lab-pod9")]), host)
    assert not outcome.result["changed"] and host.writes() == [] and outcome.result["commands"] == []
    assert list(outcome.result["found"]) == ["lab-node"]
    assert "veth-pod1" in [link["name"] for link in outcome.result["found"]["lab-node"]]


class FakeProcesses:
    """os.kill and the liveness check: pids in ``stubborn`` ignore SIGTERM."""

    def __init__(self, monkeypatch, stubborn=()):
        self.alive, self.stubborn, self.signals = set(), set(stubborn), []
        monkeypatch.setattr(lab_netns_module.os, "kill", self.kill)
        monkeypatch.setattr(lab_netns_module, "_alive", lambda pid: pid in self.alive)
        monkeypatch.setattr(lab_netns_module, "END_GRACE_S", 0.2)

    def kill(self, pid, signum):
        self.signals.append((pid, signum))
        if signum == signal.SIGKILL or pid not in self.stubborn:
            self.alive.discard(pid)


def test_end_processes_ends_them_by_pid_before_the_namespace_goes(monkeypatch):
    processes = FakeProcesses(monkeypatch, stubborn=[41])
    processes.alive.update([40, 41])
    host = FakeHost(existing=["lab-pod1"], pids={"lab-pod1": [40, 41]})
    outcome = run(monkeypatch, dict(state="absent", end_processes=True, namespaces=[dict(name="lab-pod1")]), host)
    term, kill = signal.SIGTERM, signal.SIGKILL
    assert processes.signals == [(40, term), (41, term), (41, kill)]
    assert outcome.result["commands"] == ["kill 40 41  # the processes in lab-pod1",
                                          "kill -KILL 41  # still in lab-pod1 after 0.2 s",
                                          "ip netns delete lab-pod1"]
    assert host.writes() == [(["ip", "-batch", "-"], "netns delete lab-pod1\n")]


def test_end_processes_in_check_mode_names_them_and_ends_none(monkeypatch):
    processes = FakeProcesses(monkeypatch)
    processes.alive.add(40)
    host = FakeHost(existing=["lab-pod1"], pids={"lab-pod1": [40]})
    outcome = run(monkeypatch, dict(state="absent", end_processes=True, namespaces=[dict(name="lab-pod1")]), host,
                  check_mode=True)
    assert processes.signals == [] and host.writes() == []
    assert outcome.result["changed"] and outcome.result["commands"][0] == "kill 40  # the processes in lab-pod1"


def test_kernel_modules_load_first_and_only_when_missing(monkeypatch, tmp_path):
    (tmp_path / "loaded").touch()
    kernel_modules = [dict(name="br_netfilter", present_if=str(tmp_path / "missing")),
                      dict(name="ip_vs", present_if=str(tmp_path / "loaded"))]
    host = FakeHost(existing=["lab-node"])
    outcome = run(monkeypatch, dict(kernel_modules=kernel_modules, namespaces=[NODE, POD1]), host)
    assert host.calls[0] == (["modprobe", "br_netfilter"], None), "loaded after the namespaces were read"
    assert [argv for argv, _data in host.calls if argv[0] == "modprobe"] == [["modprobe", "br_netfilter"]]
    assert outcome.result["changed"] and outcome.result["commands"][0] == "modprobe br_netfilter"


def test_kernel_modules_in_check_mode_are_listed_not_loaded(monkeypatch, tmp_path):
    host = FakeHost()
    outcome = run(monkeypatch, dict(kernel_modules=[dict(name="br_netfilter", present_if=str(tmp_path / "missing"))]),
                  host, check_mode=True)
    assert host.writes() == []
    assert outcome.result["changed"] and outcome.result["commands"] == ["modprobe br_netfilter"]


@pytest.mark.parametrize("kernel_module, field", [
    (dict(name="-a", present_if="/proc/x"), "kernel_modules[0].name"),
    (dict(name="br_netfilter", present_if="proc/sys"), "kernel_modules[0].present_if"),
])
def test_a_bad_kernel_module_is_refused_by_field(monkeypatch, kernel_module, field):
    host = FakeHost()
    outcome = run(monkeypatch, dict(kernel_modules=[kernel_module]), host)
    assert outcome.failed and outcome.result["field"] == field and host.calls == []


def test_absent_plugged_into_also_deletes_the_namespaces_behind_the_bridge_ports(monkeypatch):
    host = FakeHost(existing=["lab-node", "lab-pod1", "lab-pod7", "lab-pod2"])
    outcome = run(monkeypatch, dict(state="absent", namespaces=[dict(name="lab-pod2")],
                                    plugged_into=[dict(netns="lab-node", bridge="cni0")]), host, diff=True)
    assert outcome.result["deleted"] == ["lab-pod2", "lab-pod1", "lab-pod7"]
    assert host.writes()[-1] == (["ip", "-batch", "-"], "netns delete lab-pod2\nnetns delete lab-pod1\nnetns delete lab-pod7\n")
    assert [diff["before"] for diff in outcome.result["diff"]] == ["netns lab-pod2\n", "netns lab-pod1\n", "netns lab-pod7\n"]


def test_absent_plugged_into_a_missing_bridge_or_node_finds_nothing(monkeypatch):
    host = FakeHost(existing=["lab-node", "lab-pod1"])
    outcome = run(monkeypatch, dict(state="absent", plugged_into=[dict(netns="lab-node", bridge="gone0")]), host)
    assert not outcome.failed and outcome.result["deleted"] == [] and not outcome.result["changed"]
    host = FakeHost(existing=["lab-pod1"])
    outcome = run(monkeypatch, dict(state="absent", plugged_into=[dict(netns="lab-node", bridge="cni0")]), host)
    assert outcome.result["deleted"] == [] and not any("master" in argv for argv, _data in host.calls)


@pytest.mark.parametrize("plugged_into, field", [
    ([dict(netns="no/slash", bridge="cni0")], "plugged_into[0].netns"),
    ([dict(netns="lab-node", bridge="cni0"), dict(netns="lab-node2", bridge="")], "plugged_into[1].bridge"),
])
def test_a_bad_plugged_into_is_refused_by_field(monkeypatch, plugged_into, field):
    host = FakeHost()
    outcome = run(monkeypatch, dict(state="absent", plugged_into=plugged_into), host)
    assert outcome.failed and outcome.result["field"] == field and host.calls == []


@pytest.mark.parametrize("args, field", [
    (dict(state="absent", kernel_modules=[dict(name="br_netfilter", present_if="/x")]), "kernel_modules"),
    (dict(state="query", kernel_modules=[dict(name="br_netfilter", present_if="/x")]), "kernel_modules"),
    (dict(state="present", plugged_into=[dict(netns="lab-node", bridge="cni0")]), "plugged_into"),
    (dict(state="absent", absent_namespaces=["lab-node2"]), "absent_namespaces"),
])
def test_an_option_of_another_state_is_refused_not_ignored(monkeypatch, args, field):
    host = FakeHost()
    outcome = run(monkeypatch, args, host)
    assert outcome.failed and outcome.result["field"] == field and host.calls == []


def test_absent_namespaces_are_deleted_first_and_reported(monkeypatch):
    host = FakeHost(existing=["lab-node2"])
    outcome = run(monkeypatch, dict(namespaces=[NODE, POD1], absent_namespaces=["lab-node2", "lab-node3"]), host,
                  diff=True)
    assert host.writes()[0] == (["ip", "-batch", "-"], "netns delete lab-node2\n")
    assert outcome.result["deleted"] == ["lab-node2"] and outcome.result["created"] == ["lab-node", "lab-pod1"]
    assert dict(before="netns lab-node2\n", after="", before_header="lab-node2 (before)",
                after_header="lab-node2 (after)") in outcome.result["diff"]


@pytest.mark.parametrize("absent, field", [(["lab node2"], "absent_namespaces[0]"),
                                           (["lab-node2", "lab-node"], "absent_namespaces[1]")])
def test_a_bad_absent_namespace_is_refused_by_field(monkeypatch, absent, field):
    host = FakeHost()
    outcome = run(monkeypatch, dict(namespaces=[NODE, POD1], absent_namespaces=absent), host)
    assert outcome.failed and outcome.result["field"] == field and host.calls == []


def test_plugged_into_never_deletes_a_name_for_the_hosts_own_namespace(monkeypatch):
    monkeypatch.setattr(lab_netns_module, "_is_root_namespace", lambda name: name == "lab-pod7")
    host = FakeHost(existing=["lab-node", "lab-pod1", "lab-pod7"])
    outcome = run(monkeypatch, dict(state="absent", end_processes=True,
                                    plugged_into=[dict(netns="lab-node", bridge="cni0")]), host)
    assert outcome.result["deleted"] == ["lab-pod1"]
    assert not any(argv[:4] == ["ip", "netns", "pids", "lab-pod7"] for argv, _data in host.calls)


def test_a_run_that_only_loads_a_kernel_module_shows_it_in_the_diff(monkeypatch, tmp_path):
    host = FakeHost()
    outcome = run(monkeypatch, dict(kernel_modules=[dict(name="br_netfilter", present_if=str(tmp_path / "no"))]),
                  host, check_mode=True, diff=True)
    assert outcome.result["diff"] == [dict(before="", after="modprobe br_netfilter\n",
                                           before_header="kernel modules (before)",
                                           after_header="kernel modules (after)")]


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


def test_end_processes_ends_what_runs_in_the_absent_namespaces_before_they_go(monkeypatch):
    processes = FakeProcesses(monkeypatch)
    processes.alive.add(50)
    host = FakeHost(existing=["lab-node2"], pids={"lab-node2": [50]})
    outcome = run(monkeypatch, dict(namespaces=[NODE, POD1], absent_namespaces=["lab-node2", "lab-node3"],
                                    end_processes=True), host)
    assert processes.signals == [(50, signal.SIGTERM)]
    assert outcome.result["commands"][:2] == ["kill 50  # the processes in lab-node2", "ip netns delete lab-node2"]
    assert [argv for argv, _data in host.calls if argv[:3] == ["ip", "netns", "pids"]] == [["ip", "netns", "pids", "lab-node2"]]
