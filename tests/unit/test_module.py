"""library/kube_proxy.py main(): parameters, commands (run_command and run_reader patched), check and diff mode."""

import importlib.util
import json
import sys
from types import SimpleNamespace

import pytest
import yaml
from ansible.module_utils import basic
from ansible.module_utils.kube_proxy import health_servers, model
from ansible.module_utils.testing import patch_module_args

from conftest import FIXTURES, LIBRARY, ModuleExit
from lab_services import APP1

spec = importlib.util.spec_from_file_location("kube_proxy_module", LIBRARY / "kube_proxy.py")
kube_proxy_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kube_proxy_module)

LIVE_SAVE = (FIXTURES / "iptables-nft-save.txt").read_text()


pytestmark = pytest.mark.usefixtures("capture_module_exit")


@pytest.fixture
def netns_exists(monkeypatch, tmp_path):
    (tmp_path / "lab-node").touch()
    monkeypatch.setattr(kube_proxy_module, "NETNS_DIR", str(tmp_path))


@pytest.fixture(autouse=True)
def kernel_without_ipvs(monkeypatch, tmp_path):
    monkeypatch.setattr(kube_proxy_module, "IP_VS_LOADED", str(tmp_path / "no-ip_vs"))
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, *a, **k: "/usr/sbin/" + name)


@pytest.fixture
def kernel_with_ipvs(monkeypatch, tmp_path):
    (tmp_path / "ip_vs").mkdir()
    monkeypatch.setattr(kube_proxy_module, "IP_VS_LOADED", str(tmp_path / "ip_vs"))


class FakeNode:
    """Answers run_command and run_reader like a node: ``answers`` maps a command name to (rc, stdout, stderr)."""

    def __init__(self, save="", **answers):
        self.answers = {
            "iptables-save": (0, save, ""),
            "iptables": (0, "iptables v1.8.9 (nf_tables)\n", ""),
            "ip -o": (1, "", 'Device "kube-ipvs0" does not exist.\n'),
            "nft -j": (1, "", "Error: No such file or directory\n"),
        }
        self.answers.update({name.replace("_", "-"): answer for name, answer in answers.items()})
        self.calls = []

    def __call__(self, argv, data=None, binary_data=False, **_kwargs):
        self.calls.append((argv, data))
        command = argv[4:] if argv[:3] == ["ip", "netns", "exec"] else argv
        return self.answers.get(" ".join(command[:2]), self.answers.get(command[0], (0, "", "")))

    def commands(self):
        return [argv[4:] if argv[:3] == ["ip", "netns", "exec"] else argv for argv, _data in self.calls]

    def changes(self):
        readers = {"iptables-save", "ipvsadm-save", "iptables"}
        return [command for command in self.commands()
                if command[0] not in readers and command[:2] not in (["ipset", "save"], ["nft", "-j"], ["nft", "-c"])
                and command[:3] != ["ip", "-o", "-4"] and command[0] not in ("sysctl", "modprobe")
                or command[:2] == ["sysctl", "-w"]]


def run(monkeypatch, args, node, check_mode=False, diff=False):
    monkeypatch.setattr(basic.AnsibleModule, "run_command", node)
    monkeypatch.setattr(kube_proxy_module, "run_reader", node)
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    if diff:
        args = dict(args, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(ModuleExit) as caught:
            kube_proxy_module.main()
    return caught.value


def test_a_reader_s_output_comes_whole_with_its_exit_code():
    # Megabytes, as iptables-save prints at thousands of Services, and what went to stderr.
    script = "import sys; sys.stdout.write('x' * 5000000); sys.stderr.write('late'); sys.exit(3)"
    rc, stdout, stderr = kube_proxy_module.run_reader([sys.executable, "-c", script])
    assert (rc, len(stdout), set(stdout), stderr) == (3, 5000000, {"x"}, "late")


def app1_args(**overrides):
    args = dict(netns="lab-node", mode="iptables", services=[dict(APP1)])
    args.update(overrides)
    return args


def test_every_command_runs_inside_the_node_namespace(monkeypatch, netns_exists):
    node = FakeNode()
    run(monkeypatch, app1_args(), node)
    assert node.calls
    for argv, _data in node.calls:
        assert isinstance(argv, list)
        assert argv[:4] == ["ip", "netns", "exec", "lab-node"]


def test_only_modprobe_runs_outside_the_namespace(monkeypatch, netns_exists, kernel_with_ipvs):
    node = FakeNode()
    run(monkeypatch, app1_args(mode="ipvs"), node)
    outside = [argv for argv, _data in node.calls if argv[:4] != ["ip", "netns", "exec", "lab-node"]]
    assert outside == [["modprobe", "ip_vs"], ["modprobe", "ip_vs_rr"], ["modprobe", "dummy"]]


def test_empty_node_is_programmed_with_one_restore(monkeypatch, netns_exists):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(), node)
    assert not outcome.failed
    assert outcome.result["changed"] is True
    restores = [(argv, data) for argv, data in node.calls if argv[4] == "iptables-restore"]
    assert len(restores) == 1
    argv, data = restores[0]
    assert argv[4:] == ["iptables-restore", "--noflush"]
    assert "-A KUBE-SVC-4QFXEAV27BCWXK5E " in data
    assert "KUBE-SVC-4QFXEAV27BCWXK5E" in outcome.result["rules"]
    assert outcome.result["iptables_backend"] == "nf_tables"


def test_check_mode_reports_but_never_restores(monkeypatch, netns_exists):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(), node, check_mode=True, diff=True)
    assert outcome.result["changed"] is True
    assert node.changes() == []
    (iptables_diff,) = outcome.result["diff"]
    assert iptables_diff["before"] == ""
    assert iptables_diff["before_header"] == "lab-node: iptables (before)"
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in iptables_diff["after"]


def test_matching_live_state_changes_nothing(monkeypatch, netns_exists):
    mixed = [dict(APP1),
             dict(namespace="ns1", name="svc1", port_name="p80", cluster_ip="172.30.0.41", port=80,
                  endpoints=["10.180.0.1"], session_affinity="ClientIP", session_affinity_timeout=3600),
             dict(name="gone", cluster_ip="10.96.0.11", port=53, protocol="UDP")]
    node = FakeNode(save=LIVE_SAVE)
    outcome = run(monkeypatch, app1_args(services=mixed), node)
    assert outcome.result["changed"] is False
    assert node.changes() == []
    assert node.commands() == [
        ["iptables-save"], ["ipset", "save"], ["ip", "-o", "-4", "address", "show", "dev", "kube-ipvs0"],
        ["nft", "-j", "list", "table", "ip", "kube-proxy"]]


def test_absent_removes_owned_state(monkeypatch, netns_exists):
    node = FakeNode(save=LIVE_SAVE)
    outcome = run(monkeypatch, dict(netns="lab-node", state="absent"), node)
    assert outcome.result["changed"] is True
    assert outcome.result["rules"] == ""
    assert "nat/KUBE-SERVICES" in outcome.result["deleted_chains"]


def test_absent_on_a_missing_namespace_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.setattr(kube_proxy_module, "NETNS_DIR", str(tmp_path))
    node = FakeNode()
    outcome = run(monkeypatch, dict(netns="lab-node", state="absent"), node)
    assert not outcome.failed and outcome.result["changed"] is False
    assert node.calls == []


def test_missing_namespace_fails_with_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(kube_proxy_module, "NETNS_DIR", str(tmp_path))
    outcome = run(monkeypatch, app1_args(), FakeNode())
    assert outcome.failed
    assert "network namespace lab-node does not exist" in outcome.result["msg"]


def test_check_mode_on_a_missing_namespace_plans_against_an_empty_node(monkeypatch, tmp_path):
    """--check of a lab not built yet: report what a run on the new node would install."""
    monkeypatch.setattr(kube_proxy_module, "NETNS_DIR", str(tmp_path))
    warnings = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, warning: warnings.append(warning))
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(), node, check_mode=True, diff=True)
    assert not outcome.failed
    assert outcome.result["changed"] is True
    assert node.commands() == [["iptables", "--version"]]
    assert outcome.result["iptables_backend"] == "nf_tables"
    assert warnings == ["network namespace lab-node does not exist yet: planned against an empty node"]
    (iptables_diff,) = outcome.result["diff"]
    assert iptables_diff["before"] == "" and "KUBE-SVC-4QFXEAV27BCWXK5E" in iptables_diff["after"]


def test_check_mode_before_the_node_exists_still_asks_for_ipvs(monkeypatch, tmp_path):
    monkeypatch.setattr(kube_proxy_module, "NETNS_DIR", str(tmp_path))
    node = FakeNode(modprobe=(1, "", "modprobe: FATAL: Module ip_vs not found\n"))
    outcome = run(monkeypatch, app1_args(mode="ipvs"), node, check_mode=True)
    assert outcome.failed
    assert "mode=ipvs needs IPVS" in outcome.result["msg"]
    assert node.commands() == [["modprobe", "--dry-run", "ip_vs"]]


def test_a_run_waits_no_longer_than_lock_timeout(monkeypatch, netns_exists, tmp_path):
    node = FakeNode()
    with kube_proxy_module.node_lock(str(tmp_path / "lab-node"), timeout=1):
        outcome = run(monkeypatch, app1_args(lock_timeout=0), node)
    assert outcome.failed
    assert "another kube_proxy run held network namespace lab-node" in outcome.result["msg"]
    assert node.changes() == []


def test_negative_lock_timeout_is_refused_by_name(monkeypatch, netns_exists):
    outcome = run(monkeypatch, app1_args(lock_timeout=-1), FakeNode())
    assert outcome.failed and outcome.result["field"] == "lock_timeout"


def test_bad_input_fails_before_any_command(monkeypatch, netns_exists):
    node = FakeNode()
    bad = dict(APP1, endpoints=["10.0.0.2", "10.0.0.999"])
    outcome = run(monkeypatch, app1_args(services=[bad]), node)
    assert outcome.failed
    assert outcome.result["field"] == "services[0].endpoints[1]"
    assert outcome.result["msg"].startswith("services[0].endpoints[1]: ")
    assert node.calls == []


def test_unknown_mode_is_refused_by_name(monkeypatch, netns_exists):
    outcome = run(monkeypatch, app1_args(mode="userspace"), FakeNode())
    assert outcome.failed
    assert "mode" in outcome.result["msg"] and "userspace" in outcome.result["msg"]


def test_nftables_mode_replaces_the_table_and_clears_kube_chains(monkeypatch, netns_exists):
    node = FakeNode(save=LIVE_SAVE)
    outcome = run(monkeypatch, app1_args(mode="nftables", service_cidr="10.96.0.0/12"), node)
    assert not outcome.failed, outcome.result.get("msg")
    changes = node.changes()
    assert changes[0] == ["iptables-restore", "--noflush"]
    assert changes[-1] == ["nft", "-f", "-"]
    nft_input = [data for argv, data in node.calls if argv[4:] == ["nft", "-f", "-"]][0]
    assert "add table ip kube-proxy" in nft_input and "delete table" not in nft_input
    assert "drop comment \"Drop traffic to unallocated ClusterIPs\"" in nft_input
    assert outcome.result["rules"].startswith("add table ip kube-proxy")


def test_nftables_mode_on_a_kernel_without_ip_nf_tables_says_so(monkeypatch, netns_exists):
    node = FakeNode(**{"nft -c": (1, "", "Error: Could not process rule: Operation not supported\nadd table ip kube-proxy\n")})
    outcome = run(monkeypatch, app1_args(mode="nftables"), node)
    assert outcome.failed
    assert "Operation not supported" in outcome.result["msg"] and "mode=iptables or mode=ipvs" in outcome.result["msg"]
    assert node.changes() == []


def test_nftables_mode_with_the_table_in_place_changes_nothing(monkeypatch, netns_exists):
    node = FakeNode(**{"nft -j": (0, (FIXTURES / "nft-app1.json").read_text(), "")})
    outcome = run(monkeypatch, app1_args(mode="nftables", service_cidr="10.96.0.0/12"), node)
    assert outcome.result["changed"] is False, node.changes()


@pytest.mark.parametrize("release, in_place", [("6.18.44-fc-v782", True), ("6.1.0-18-amd64", False)])
def test_nftables_mode_edits_the_table_in_place_where_the_kernel_allows(monkeypatch, netns_exists, release, in_place):
    # Before 6.2 the kernel refuses to delete the lost endpoint's chain in the same transaction.
    monkeypatch.setattr(kube_proxy_module.os, "uname", lambda: SimpleNamespace(release=release))
    node = FakeNode(**{"nft -j": (0, (FIXTURES / "nft-app1.json").read_text(), "")})
    fewer = dict(APP1, endpoints=APP1["endpoints"][:-1])
    outcome = run(monkeypatch, app1_args(mode="nftables", service_cidr="10.96.0.0/12", services=[fewer]), node)
    assert outcome.result["changed"] is True
    (nft_input,) = [data for argv, data in node.calls if argv[4:] == ["nft", "-f", "-"]]
    assert ("delete table" not in nft_input) is in_place
    assert ("delete chain ip kube-proxy endpoint-" in nft_input) is in_place


def test_leaving_nftables_deletes_the_table(monkeypatch, netns_exists):
    node = FakeNode(**{"nft -j": (0, (FIXTURES / "nft-app1.json").read_text(), "")})
    outcome = run(monkeypatch, dict(netns="lab-node", state="absent"), node)
    assert outcome.result["changed"] is True
    nft_input = [data for argv, data in node.calls if argv[4:] == ["nft", "-f", "-"]][0]
    assert nft_input.endswith("delete table ip kube-proxy\n")


def test_ipvs_on_a_kernel_without_ip_vs_names_the_way_out(monkeypatch, netns_exists):
    node = FakeNode(modprobe=(1, "", "modprobe: FATAL: Module ip_vs not found in directory /lib/modules/6.18\n"))
    outcome = run(monkeypatch, app1_args(mode="ipvs"), node)
    assert outcome.failed
    assert "Module ip_vs not found" in outcome.result["msg"]
    assert "make lab-shell MODE=ipvs" in outcome.result["msg"]
    assert node.commands() == [["modprobe", "ip_vs"]]


def test_ipvs_check_mode_only_asks_modprobe(monkeypatch, netns_exists):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(mode="ipvs"), node, check_mode=True)
    assert outcome.result["changed"] is True
    assert ["modprobe", "--dry-run", "ip_vs"] in node.commands()
    assert node.changes() == []


def test_ipvs_mode_applies_in_dependency_order(monkeypatch, netns_exists, kernel_with_ipvs):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(mode="ipvs"), node, diff=True)
    assert not outcome.failed, outcome.result["msg"]
    assert outcome.result["changed"] is True
    assert [command[0] for command in node.changes()] == [
        "sysctl", "ipset", "iptables-restore", "ipvsadm", "ip"]
    batch = [data for argv, data in node.calls if argv[4:] == ["ip", "-batch", "-"]][0]
    assert "link add kube-ipvs0 type dummy" in batch and "address add 10.96.0.10/32 dev kube-ipvs0" in batch
    assert "# ipvsadm-save -n\n-A -t 10.96.0.10:80 -s rr\n" in outcome.result["rules"]
    assert {d["before_header"] for d in outcome.result["diff"]} == {
        "lab-node: %s (before)" % name for name in ("sysctls", "ipset", "iptables", "ipvs", "kube-ipvs0")}


def test_failing_command_names_itself_and_the_namespace(monkeypatch, netns_exists):
    outcome = run(monkeypatch, app1_args(), FakeNode(iptables_restore=(1, "", "iptables-restore: something broke")))
    assert outcome.failed
    assert outcome.result["msg"] == "iptables-restore failed in network namespace lab-node: iptables-restore: something broke"
    assert outcome.result["rc"] == 1


# --------------------------------------------------------------------------- conntrack cleanup

DNS_SERVICE = dict(namespace="default", name="dns", port_name="dns", protocol="UDP", cluster_ip="10.96.0.53",
                   port=53, target_port=8053, endpoints=["10.0.0.2", dict(ip="10.0.0.3", ready=False, serving=False)])
# A flow to the stopped pod 10.0.0.3, one to the live pod, and one of another UDP service.
CONNTRACK_LIST = "".join(
    "udp      17 170 src=192.168.100.2 dst=%s sport=40000 dport=%d src=%s dst=192.168.100.2 sport=%d dport=40000 "
    "[ASSURED] mark=0 use=1\n" % flow
    for flow in [("10.96.0.53", 53, "10.0.0.3", 8053), ("10.96.0.53", 53, "10.0.0.2", 8053),
                 ("10.96.0.99", 53, "10.0.0.3", 53)])
STALE_DELETE = ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.53", "--orig-port-dst", "53",
                "--reply-src", "10.0.0.3"]


def conntrack_node():
    node = FakeNode()
    node.answers["conntrack -L"] = (0, CONNTRACK_LIST, "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n")
    node.answers["conntrack -D"] = (0, CONNTRACK_LIST.splitlines()[0], "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been deleted.\n")
    return node


def test_the_stale_udp_flow_is_deleted_once_the_rules_are_in(monkeypatch, netns_exists):
    node = conntrack_node()
    outcome = run(monkeypatch, app1_args(services=[dict(APP1), DNS_SERVICE]), node, diff=True)
    commands = node.commands()
    assert [command for command in commands if command[0] == "conntrack"] == [["conntrack", "-L", "-p", "udp"], STALE_DELETE]
    assert commands.index(["iptables-restore", "--noflush"]) < commands.index(["conntrack", "-L", "-p", "udp"])
    assert outcome.result["conntrack_deleted"] == [CONNTRACK_LIST.splitlines()[0]]
    conntrack_diff = outcome.result["diff"][-1]
    assert conntrack_diff["before_header"] == "lab-node: conntrack (before)"
    assert conntrack_diff["before"] == CONNTRACK_LIST.splitlines()[0] + "\n" and conntrack_diff["after"] == ""


def test_check_mode_finds_the_stale_flows_and_deletes_none(monkeypatch, netns_exists):
    node = conntrack_node()
    outcome = run(monkeypatch, app1_args(services=[DNS_SERVICE]), node, check_mode=True)
    assert ["conntrack", "-L", "-p", "udp"] in node.commands()
    assert not [command for command in node.commands() if command[:2] == ["conntrack", "-D"]]
    assert outcome.result["changed"] is True
    assert outcome.result["conntrack_deleted"] == [CONNTRACK_LIST.splitlines()[0]]


def test_no_stale_flow_no_change(monkeypatch, netns_exists):
    node = conntrack_node()
    node.answers["conntrack -L"] = (0, CONNTRACK_LIST.splitlines()[1] + "\n", "")
    first = run(monkeypatch, app1_args(services=[DNS_SERVICE]), node)
    node.answers["iptables-save"] = (0, first.result["rules"], "")
    outcome = run(monkeypatch, app1_args(services=[DNS_SERVICE]), node)
    assert outcome.result["changed"] is False
    assert outcome.result["conntrack_deleted"] == []


@pytest.mark.parametrize("args", [dict(conntrack_cleanup=False), dict(services=[dict(APP1)]),
                                  dict(services=[dict(DNS_SERVICE, endpoints=[])]), dict(state="absent")])
def test_no_cleanup_without_a_udp_service_port_with_endpoints_or_when_switched_off(monkeypatch, netns_exists, args):
    node = conntrack_node()
    outcome = run(monkeypatch, app1_args(**dict(dict(services=[DNS_SERVICE]), **args)), node)
    assert not outcome.failed
    assert not [command for command in node.commands() if command[0] == "conntrack"]
    assert "conntrack_deleted" not in outcome.result


def test_a_flow_gone_since_the_listing_is_no_failure(monkeypatch, netns_exists):
    node = conntrack_node()
    node.answers["conntrack -D"] = (1, "", "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n")
    assert not run(monkeypatch, app1_args(services=[DNS_SERVICE]), node).failed


def test_a_failing_delete_names_the_command_and_the_namespace(monkeypatch, netns_exists):
    node = conntrack_node()
    node.answers["conntrack -D"] = (1, "", "conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters\n")
    outcome = run(monkeypatch, app1_args(services=[DNS_SERVICE]), node)
    assert outcome.failed
    assert outcome.result["msg"] == ("conntrack -D failed in network namespace lab-node: "
                                     "conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters")
    assert outcome.result["cmd"] == STALE_DELETE


# --------------------------------------------------------------------------- documentation

def _documented_options():
    return yaml.safe_load(kube_proxy_module.DOCUMENTATION)["options"]


def _compare(documented, spec_options, where):
    assert sorted(documented) == sorted(spec_options), where
    for name, spec_entry in spec_options.items():
        doc_entry = documented[name]
        here = "%s.%s" % (where, name)
        assert doc_entry.get("type", "str") == spec_entry.get("type", "str"), here
        assert doc_entry.get("required", False) == spec_entry.get("required", False), here
        assert doc_entry.get("default") == spec_entry.get("default"), here
        assert doc_entry.get("choices") == spec_entry.get("choices"), here
        assert doc_entry.get("elements") == spec_entry.get("elements"), here
        assert doc_entry.get("description"), here
        if "options" in spec_entry:
            _compare(doc_entry["suboptions"], spec_entry["options"], here)


LOCAL_LB = dict(APP1, type="LoadBalancer", node_port=30080, load_balancer_ips=["192.168.200.10"],
                external_traffic_policy="Local", health_check_node_port=30081,
                endpoints=[dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.0.3", node_name="lab-node2")])


@pytest.fixture
def health_run_dir(monkeypatch, tmp_path):
    """A run directory for the health check servers, and the node's namespace where they look."""
    monkeypatch.setattr(health_servers, "NETNS_DIR", str(tmp_path))
    monkeypatch.setattr(health_servers, "end_servers", lambda module, servers: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir


def server_starts(node):
    return [command for command in node.commands() if "start" in command and "--health-file" in command]


def test_the_node_answers_its_health_check_node_port_after_the_sync(monkeypatch, netns_exists, health_run_dir):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(node_name="lab-node", services=[LOCAL_LB],
                                         health_check_run_dir=str(health_run_dir)), node)
    health = outcome.result["health_check"]
    assert health["started"] == ["lab-node:30081"] and health["stopped"] == []
    assert health["health_check_node_ports"] == {"30081": {"service": "default/app1", "local_endpoints": 1}}
    assert json.loads((health_run_dir / "health" / "lab-node.json").read_text())["30081"]["local_endpoints"] == 1
    assert [command[command.index("--port") + 1] for command in server_starts(node)] == ["30081"]
    assert node.commands().index(server_starts(node)[0]) > max(
        index for index, command in enumerate(node.commands()) if command[0] == "iptables-restore")


def test_health_check_servers_of_a_port_no_longer_declared_end_and_leave_nothing(monkeypatch, netns_exists, health_run_dir):
    run(monkeypatch, app1_args(node_name="lab-node", services=[LOCAL_LB], health_check_run_dir=str(health_run_dir)), FakeNode())
    (health_run_dir / "health" / "lab-node.30081.pid").write_text("4242\n")
    monkeypatch.setattr(health_servers.server, "running_pid", lambda pidfile: 4242 if pidfile.endswith(".30081.pid") else None)
    outcome = run(monkeypatch, app1_args(node_name="lab-node", health_check_run_dir=str(health_run_dir)), FakeNode())
    assert outcome.result["changed"] and outcome.result["health_check"]["stopped"] == ["lab-node:30081"]
    assert "kill 4242" in outcome.result["health_check"]["commands"][0]


def test_check_mode_plans_the_health_check_servers_and_starts_none(monkeypatch, netns_exists, health_run_dir):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(node_name="lab-node", services=[LOCAL_LB], health_check_run_dir=str(health_run_dir)),
                  node, check_mode=True, diff=True)
    assert outcome.result["health_check"]["started"] == ["lab-node:30081"] and not server_starts(node)
    assert not (health_run_dir / "health").exists()
    assert "lab-node: health check servers (after)" in [entry["after_header"] for entry in outcome.result["diff"]]


def test_without_health_check_run_dir_no_health_check_server_is_touched(monkeypatch, netns_exists):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(node_name="lab-node", services=[LOCAL_LB]), node)
    assert "health_check" not in outcome.result and not server_starts(node)


def test_a_relative_health_check_run_dir_is_refused_by_name(monkeypatch, netns_exists):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(health_check_run_dir="run"), node)
    assert outcome.failed and outcome.result["field"] == "health_check_run_dir" and not node.calls


def test_documentation_matches_argument_spec():
    _compare(_documented_options(), kube_proxy_module.ARGUMENT_SPEC, "options")


def test_every_field_of_a_service_is_documented_as_its_suboption():
    # Ansible does not check the fields (argspec.SERVICES), so the documentation is held to the model.
    documented = _documented_options()["services"]["suboptions"]
    assert sorted(documented) == sorted(model.SERVICE_FIELDS)
    choices = dict(protocol=model.PROTOCOLS, session_affinity=model.AFFINITIES, type=model.SERVICE_TYPES,
                   external_traffic_policy=model.TRAFFIC_POLICIES, internal_traffic_policy=model.TRAFFIC_POLICIES)
    assert {name: tuple(option["choices"]) for name, option in documented.items() if "choices" in option} == choices
    minimal = model.build_service(0, dict(name="app1", cluster_ip="10.96.0.10", port=80))
    for name in ("namespace", "port_name", "protocol", "session_affinity", "session_affinity_timeout"):
        assert documented[name].get("default") == getattr(minimal, name), name


def test_examples_and_return_are_valid_yaml():
    examples = yaml.safe_load(kube_proxy_module.EXAMPLES)
    assert all("kube_proxy" in task for task in examples)
    returned = yaml.safe_load(kube_proxy_module.RETURN)
    assert {"rules", "changed_chains", "deleted_chains", "mode", "netns"} <= set(returned)
    json.dumps(returned)


WRITERS = ("iptables-restore", "ipset restore", "ipvsadm -R", "nft -f", "ip -batch", "sysctl -w", "modprobe")


def test_query_tells_the_running_mode_and_writes_nothing(monkeypatch, netns_exists):
    node = FakeNode(save=LIVE_SAVE)
    outcome = run(monkeypatch, dict(netns="lab-node", state="query"), node)
    assert not outcome.failed and outcome.result["changed"] is False
    assert outcome.result["running_mode"] == "iptables"
    assert outcome.result["iptables_backend"] == "nf_tables"
    commands = [" ".join(argv[4:] if argv[:3] == ["ip", "netns", "exec"] else argv) for argv, _data in node.calls]
    assert not [command for command in commands if command.startswith(WRITERS)], commands


def test_query_of_a_node_with_kube_ipvs0_says_ipvs(monkeypatch, netns_exists):
    node = FakeNode(save=LIVE_SAVE, **{"ip -o": (0, "5: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\n", "")})
    assert run(monkeypatch, dict(netns="lab-node", state="query"), node).result["running_mode"] == "ipvs"


def test_query_of_a_missing_node_says_none(monkeypatch, tmp_path):
    monkeypatch.setattr(kube_proxy_module, "NETNS_DIR", str(tmp_path))
    node = FakeNode()
    outcome = run(monkeypatch, dict(netns="lab-node", state="query"), node)
    assert not outcome.failed and outcome.result["running_mode"] is None and node.calls == []


def test_the_nodes_own_endpoints_are_returned_and_only_ready_ones_programmed(monkeypatch, netns_exists):
    endpoints = [dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.1.2", node_name="lab-node2"),
                 dict(ip="10.0.0.3", node_name="lab-node", ready=False, serving=False)]
    outcome = run(monkeypatch, app1_args(node_name="lab-node", services=[dict(APP1, endpoints=endpoints)]), FakeNode(),
                  check_mode=True)
    assert not outcome.failed
    assert outcome.result["local_endpoints"] == {"default/app1": ["10.0.0.2"]}
    assert "10.0.1.2:8080" in outcome.result["rules"] and "10.0.0.3:8080" not in outcome.result["rules"]


def test_a_bad_node_name_is_refused_before_any_command(monkeypatch, netns_exists):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(node_name="Lab Node"), node)
    assert outcome.failed and outcome.result["field"] == "node_name" and node.calls == []
