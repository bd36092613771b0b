"""library/kube_proxy_health.py: writes the node's health file, starts one server per health
check node port, ends those whose port is gone (run_command and the process checks patched)."""

import importlib.util
import inspect
import json

import pytest
from ansible.module_utils import basic
from ansible.module_utils.kube_proxy import health_servers
from ansible.module_utils.lab_pods import server
from ansible.module_utils.testing import patch_module_args

from conftest import LIBRARY, ModuleExit

spec = importlib.util.spec_from_file_location("kube_proxy_health_module", LIBRARY / "kube_proxy_health.py")
kube_proxy_health = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kube_proxy_health)

pytestmark = pytest.mark.usefixtures("capture_module_exit")

APP1 = dict(name="app1", cluster_ip="10.96.0.10", port=80, target_port=8080, type="LoadBalancer", node_port=30080,
            load_balancer_ips=["192.168.200.10"], external_traffic_policy="Local", health_check_node_port=30081,
            endpoints=[dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.1.2", node_name="lab-node2")])
CLUSTER_IP = dict(name="app1", cluster_ip="10.96.0.10", port=80, target_port=8080, endpoints=["10.0.0.2"])


class Servers:
    """The health check servers that run (by pidfile: as declared, or with ``other`` settings,
    or in a namespace that is no longer the node's), the commands run and the pids ended."""

    def __init__(self, monkeypatch, running=(), other=(), elsewhere=()):
        self.running, self.other, self.elsewhere = set(running), set(other), set(elsewhere)
        self.calls, self.ended = [], []
        monkeypatch.setattr(basic.AnsibleModule, "run_command", self.run_command)
        monkeypatch.setattr(server, "running_pid", self.running_pid)
        monkeypatch.setattr(server, "running_with", self.running_with)
        monkeypatch.setattr(health_servers, "in_namespace", lambda pid, netns: pid not in self.pids(self.elsewhere))
        monkeypatch.setattr(health_servers, "end_servers", lambda module, servers: self.ended.extend(servers))

    @staticmethod
    def pid(name):
        return 100 + sorted(["lab-node.30081", "lab-node.30082", "lab-node2.30081"]).index(name)

    def pids(self, names):
        return set(self.pid(name) for name in names)

    @staticmethod
    def _name(pidfile):
        return pidfile.rsplit("/", 1)[1][:-len(".pid")]

    def running_pid(self, pidfile):
        name = self._name(pidfile)
        return self.pid(name) if name in self.running | self.other | self.elsewhere else None

    def running_with(self, pidfile, name, port, logfile, health_file=None):
        assert pidfile.endswith("/health/%s.%d.pid" % (name, port)) and logfile.endswith("/health/%s.%d.log" % (name, port))
        assert health_file.endswith("/health/%s.json" % name)
        return self.running_pid(pidfile) if self._name(pidfile) in self.running | self.elsewhere else None

    def run_command(self, argv, **_kwargs):
        self.calls.append(argv)
        return 0, "started pid 200\n", ""

    def actions(self):
        return [(argv[3], argv[argv.index("--port") + 1], argv[6]) for argv in self.calls]


def run(args, check_mode=False, diff=False):
    with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)):
        with pytest.raises(ModuleExit) as caught:
            kube_proxy_health.main()
    return caught.value


@pytest.fixture
def node(monkeypatch, tmp_path):
    """An existing lab-node (its /run/netns file) and a run directory."""
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    for name in ("lab-node", "lab-node2"):
        (netns_dir / name).touch()
    monkeypatch.setattr(health_servers, "NETNS_DIR", str(netns_dir))
    return tmp_path / "run"


def installed(run_dir, netns="lab-node", count=1):
    health = run_dir / "health"
    health.mkdir(parents=True, exist_ok=True)
    (health / "lab_pod_server.py").write_text(inspect.getsource(server))
    (health / ("%s.json" % netns)).write_text(json.dumps(
        {"30081": {"local_endpoints": count, "name": "app1", "namespace": "default"}}, indent=2, sort_keys=True) + "\n")
    return health


def test_a_new_node_gets_the_script_its_health_file_and_one_server_per_port(monkeypatch, node):
    servers = Servers(monkeypatch)
    outcome = run(dict(netns="lab-node", services=[APP1], run_dir=str(node), python="/usr/bin/python3"))
    health = node / "health"
    assert outcome.result["changed"] and outcome.result["started"] == ["lab-node:30081"]
    assert outcome.result["health_check_node_ports"] == {"30081": {"service": "default/app1", "local_endpoints": 1}}
    assert (health / "lab_pod_server.py").read_text() == inspect.getsource(server)
    assert json.loads((health / "lab-node.json").read_text()) == \
        {"30081": {"namespace": "default", "name": "app1", "local_endpoints": 1}}
    assert servers.calls == [["ip", "netns", "exec", "lab-node", "/usr/bin/python3", str(health / "lab_pod_server.py"),
                              "start", "--name", "lab-node", "--port", "30081",
                              "--pidfile", str(health / "lab-node.30081.pid"),
                              "--logfile", str(health / "lab-node.30081.log"),
                              "--health-file", str(health / "lab-node.json")]]
    assert outcome.result["commands"] == [" ".join(servers.calls[0])]


def test_a_node_as_declared_changes_nothing(monkeypatch, node):
    installed(node)
    servers = Servers(monkeypatch, running=["lab-node.30081"])
    outcome = run(dict(netns="lab-node", services=[APP1], run_dir=str(node)))
    assert not outcome.result["changed"] and servers.calls == [] and outcome.result["commands"] == []


def test_a_new_count_is_written_without_a_restart(monkeypatch, node):
    health = installed(node, count=0)
    servers = Servers(monkeypatch, running=["lab-node.30081"])
    outcome = run(dict(netns="lab-node", services=[APP1], run_dir=str(node)), diff=True)
    assert outcome.result["changed"] and servers.calls == [] and servers.ended == []
    assert json.loads((health / "lab-node.json").read_text())["30081"]["local_endpoints"] == 1
    assert '"local_endpoints": 0' in outcome.result["diff"][0]["before"]
    assert '"local_endpoints": 1' in outcome.result["diff"][0]["after"]


def test_the_node_name_decides_the_count(monkeypatch, node):
    Servers(monkeypatch)
    outcome = run(dict(netns="lab-node", node_name="lab-node3", services=[APP1], run_dir=str(node)))
    assert outcome.result["health_check_node_ports"]["30081"]["local_endpoints"] == 0


def test_a_server_with_other_settings_is_replaced_and_a_new_script_restarts(monkeypatch, node):
    installed(node)
    servers = Servers(monkeypatch, other=["lab-node.30081"])
    run(dict(netns="lab-node", services=[APP1], run_dir=str(node)))
    assert servers.actions() == [("lab-node", "30081", "start")]
    (node / "health" / "lab_pod_server.py").write_text("# an older version\n")
    servers = Servers(monkeypatch, running=["lab-node.30081"])
    run(dict(netns="lab-node", services=[APP1], run_dir=str(node)))
    assert servers.actions() == [("lab-node", "30081", "restart")]


def test_a_server_left_in_an_old_namespace_is_ended_and_started_in_the_node(monkeypatch, node):
    installed(node)
    servers = Servers(monkeypatch, elsewhere=["lab-node.30081"])
    outcome = run(dict(netns="lab-node", services=[APP1], run_dir=str(node)))
    assert servers.ended == [(Servers.pid("lab-node.30081"), str(node / "health" / "lab-node.30081.pid"))]
    assert servers.actions() == [("lab-node", "30081", "start")] and outcome.result["stopped"] == []


def test_a_port_gone_ends_its_server_by_pid_and_forgets_its_files(monkeypatch, node):
    health = installed(node)
    for name in ("lab-node.30081.pid", "lab-node.30081.log", "lab-node2.30081.pid"):
        (health / name).write_text("1\n")
    servers = Servers(monkeypatch, running=["lab-node.30081", "lab-node2.30081"])
    outcome = run(dict(netns="lab-node", services=[CLUSTER_IP], run_dir=str(node)))
    assert servers.ended == [(Servers.pid("lab-node.30081"), str(health / "lab-node.30081.pid"))]
    assert outcome.result["changed"] and outcome.result["stopped"] == ["lab-node:30081"]
    assert outcome.result["health_check_node_ports"] == {} and servers.calls == []
    # lab-node2's server is lab-node2's business.
    assert sorted(path.name for path in health.iterdir()) == ["lab-node2.30081.pid", "lab_pod_server.py"]


def test_the_last_node_to_lose_its_health_checks_takes_the_script_and_directory_along(monkeypatch, node):
    health = installed(node)
    (health / "lab-node.30081.pid").write_text("1\n")
    Servers(monkeypatch, running=["lab-node.30081"])
    outcome = run(dict(netns="lab-node", services=[CLUSTER_IP], run_dir=str(node)))
    assert outcome.result["changed"] and outcome.result["stopped"] == ["lab-node:30081"]
    assert not health.exists()


def test_the_files_of_a_node_scaled_away_go_once_its_servers_ended(monkeypatch, node):
    health = installed(node)
    (node.parent / "netns" / "lab-node2").unlink()
    for name in ("lab-node2.30081.log", "lab-node2.json"):
        (health / name).write_text("1\n")
    Servers(monkeypatch)
    outcome = run(dict(netns="lab-node", services=[CLUSTER_IP], run_dir=str(node)))
    assert outcome.result["changed"] and not health.exists()
    assert "rm %s" % (health / "lab-node2.30081.log") in outcome.result["commands"]


def test_the_files_of_a_node_scaled_away_stay_while_its_server_runs(monkeypatch, node):
    health = installed(node, netns="lab-node2")
    (node.parent / "netns" / "lab-node2").unlink()
    (health / "lab-node2.30081.pid").write_text("1\n")
    Servers(monkeypatch, running=["lab-node2.30081"])
    run(dict(netns="lab-node", services=[CLUSTER_IP], run_dir=str(node)))
    assert sorted(path.name for path in health.iterdir()) == ["lab-node2.30081.pid", "lab-node2.json", "lab_pod_server.py"]


def test_a_cluster_ip_lab_without_health_files_changes_nothing(monkeypatch, node):
    servers = Servers(monkeypatch)
    outcome = run(dict(netns="lab-node", services=[CLUSTER_IP], run_dir=str(node)))
    assert not outcome.result["changed"] and servers.calls == [] and not node.exists()


def test_check_mode_says_what_it_would_start_and_writes_nothing(monkeypatch, node):
    servers = Servers(monkeypatch)
    outcome = run(dict(netns="lab-node", services=[APP1], run_dir=str(node)), check_mode=True, diff=True)
    assert outcome.result["changed"] and outcome.result["started"] == ["lab-node:30081"]
    assert servers.calls == [] and not node.exists()
    assert outcome.result["diff"][1]["after"] == "lab-node:30081 health check server\n"
    assert outcome.result["diff"][1]["before"] == ""


def test_a_missing_node_fails_unless_in_check_mode(monkeypatch, node):
    Servers(monkeypatch)
    outcome = run(dict(netns="lab-node4", services=[APP1], run_dir=str(node)))
    assert outcome.failed and "lab-node4 does not exist" in outcome.result["msg"]
    outcome = run(dict(netns="lab-node4", services=[APP1], run_dir=str(node)), check_mode=True)
    assert not outcome.failed and outcome.result["started"] == ["lab-node4:30081"]


def test_a_server_that_does_not_start_fails_naming_node_and_port(monkeypatch, node):
    Servers(monkeypatch)
    monkeypatch.setattr(basic.AnsibleModule, "run_command",
                        lambda self, argv, **_kw: (1, "", "lab-node: cannot listen on port 30081: Address in use\n"))
    outcome = run(dict(netns="lab-node", services=[APP1], run_dir=str(node)))
    assert outcome.failed and outcome.result["msg"].startswith("the health check server of lab-node:30081 did not start")


def test_bad_services_are_refused_by_field(monkeypatch, node):
    Servers(monkeypatch)
    outcome = run(dict(netns="lab-node", services=[dict(APP1, health_check_node_port=80)], run_dir=str(node)))
    assert outcome.failed and outcome.result["field"] == "services[0].health_check_node_port"
    outcome = run(dict(netns="lab-node", services=[APP1], run_dir="run"))
    assert outcome.failed and outcome.result["field"] == "run_dir"


def test_present_needs_the_node(monkeypatch, node):
    Servers(monkeypatch)
    outcome = run(dict(services=[APP1], run_dir=str(node)))
    assert outcome.failed and "netns" in outcome.result["msg"]


def test_absent_without_a_node_ends_every_server_and_deletes_the_health_directory(monkeypatch, node):
    health = installed(node)
    for name in ("lab-node.30081.pid", "lab-node.30082.pid", "lab-node2.30081.pid", "lab-node2.30081.log"):
        (health / name).write_text("1\n")
    servers = Servers(monkeypatch, running=["lab-node.30081", "lab-node2.30081"])
    outcome = run(dict(state="absent", run_dir=str(node)))
    assert servers.ended == [(Servers.pid("lab-node.30081"), str(health / "lab-node.30081.pid")),
                             (Servers.pid("lab-node2.30081"), str(health / "lab-node2.30081.pid"))]
    assert outcome.result["stopped"] == ["lab-node:30081", "lab-node2:30081"]
    assert outcome.result["changed"] and not health.exists() and node.exists()
    assert outcome.result["commands"][-1] == "rm -r %s" % health


def test_absent_for_one_node_leaves_the_others(monkeypatch, node):
    health = installed(node)
    for name in ("lab-node.30081.pid", "lab-node2.30081.pid"):
        (health / name).write_text("1\n")
    servers = Servers(monkeypatch, running=["lab-node.30081", "lab-node2.30081"])
    outcome = run(dict(state="absent", netns="lab-node2", run_dir=str(node)))
    assert servers.ended == [(Servers.pid("lab-node2.30081"), str(health / "lab-node2.30081.pid"))]
    assert sorted(path.name for path in health.iterdir()) == ["lab-node.30081.pid", "lab-node.json", "lab_pod_server.py"]


def test_absent_in_check_mode_ends_and_deletes_nothing(monkeypatch, node):
    health = installed(node)
    (health / "lab-node.30081.pid").write_text("1\n")
    servers = Servers(monkeypatch, running=["lab-node.30081"])
    outcome = run(dict(state="absent", run_dir=str(node)), check_mode=True)
    assert outcome.result["changed"] and outcome.result["stopped"] == ["lab-node:30081"]
    assert servers.ended == [] and health.exists()


def test_absent_when_nothing_is_left_changes_nothing(monkeypatch, node):
    Servers(monkeypatch)
    outcome = run(dict(state="absent", run_dir=str(node)))
    assert not outcome.result["changed"] and outcome.result["commands"] == []


def test_documentation_matches_argument_spec():
    import yaml  # pylint: disable=import-outside-toplevel

    yaml.safe_load(kube_proxy_health.EXAMPLES)
    assert set(yaml.safe_load(kube_proxy_health.RETURN)) == {"health_check_node_ports", "started", "stopped", "commands"}
    documented = yaml.safe_load(kube_proxy_health.DOCUMENTATION)["options"]
    assert {name: option["type"] for name, option in documented.items()} == \
        {name: option["type"] for name, option in kube_proxy_health.ARGUMENT_SPEC.items()}


def test_a_pidfile_its_ended_server_deleted_itself_is_no_error(monkeypatch, node):
    health = installed(node)
    (health / "lab-node.30081.pid").write_text("1\n")
    servers = Servers(monkeypatch, running=["lab-node.30081"])
    monkeypatch.setattr(health_servers, "end_servers",
                        lambda module, ended: [(health / "lab-node.30081.pid").unlink() for _server in ended])
    outcome = run(dict(netns="lab-node", services=[CLUSTER_IP], run_dir=str(node)))
    assert not outcome.failed and outcome.result["stopped"] == ["lab-node:30081"] and servers.calls == []
    assert not health.exists()
