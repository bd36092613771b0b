"""library/lab_pod_servers.py: installs the pod server, starts only what does not run as
declared, leaves held pods alone (run_command and the server's process checks patched)."""

import importlib.util
import inspect
import signal
import socket
import threading

import pytest
from ansible.module_utils import basic
from ansible.module_utils.lab_pods import server
from ansible.module_utils.testing import patch_module_args

from conftest import LIBRARY, ModuleExit

spec = importlib.util.spec_from_file_location("lab_pod_servers_module", LIBRARY / "lab_pod_servers.py")
lab_pod_servers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_pod_servers)

pytestmark = pytest.mark.usefixtures("capture_module_exit")
PODS = ["pod1", "pod2", "pod3"]


class Servers:
    """The pods whose server runs (with the declared settings, or ``other`` ones), and the
    commands the module ran."""

    def __init__(self, monkeypatch, running=(), other=()):
        self.running, self.other, self.calls = set(running), set(other), []
        monkeypatch.setattr(basic.AnsibleModule, "run_command", self.run_command)
        monkeypatch.setattr(server, "running_pid", self.running_pid)
        monkeypatch.setattr(server, "running_with", self.running_with)

    @staticmethod
    def _pod(pidfile):
        return pidfile.rsplit("/", 1)[1][:-len(".pid")]

    def running_pid(self, pidfile):
        return 100 if self._pod(pidfile) in self.running | self.other else None

    def running_with(self, pidfile, name, port, logfile, udp_port=None):
        assert pidfile.endswith("/%s.pid" % name) and logfile.endswith("/%s.log" % name) and port == 8080
        return 100 if name in self.running and udp_port == self.udp_port else None

    udp_port = None

    def run_command(self, argv, **_kwargs):
        self.calls.append(argv)
        return 0, "started pid 200\n", ""

    def actions(self):
        return [(argv[3], argv[6]) for argv in self.calls]


def run(args, check_mode=False):
    with patch_module_args(dict(args, _ansible_check_mode=check_mode)):
        with pytest.raises(ModuleExit) as caught:
            lab_pod_servers.main()
    return caught.value


def installed(run_dir):
    (run_dir / "lab_pod_server.py").write_text(inspect.getsource(server))


def test_a_new_lab_gets_the_script_and_every_server(monkeypatch, tmp_path):
    servers = Servers(monkeypatch)
    run_dir = tmp_path / "run"
    outcome = run(dict(pods=PODS, run_dir=str(run_dir), python="/usr/bin/python3"))
    assert outcome.result["changed"] and outcome.result["serving"] == PODS
    assert (run_dir / "lab_pod_server.py").read_text() == inspect.getsource(server)
    assert servers.actions() == [("lab-pod1", "start"), ("lab-pod2", "start"), ("lab-pod3", "start")]
    assert servers.calls[0] == ["ip", "netns", "exec", "lab-pod1", "/usr/bin/python3", str(run_dir / "lab_pod_server.py"),
                                "start", "--name", "pod1", "--port", "8080", "--pidfile", str(run_dir / "pod1.pid"),
                                "--logfile", str(run_dir / "pod1.log")]
    assert outcome.result["commands"] == [" ".join(argv) for argv in servers.calls]


def test_a_udp_port_is_part_of_every_servers_command_line_and_settings(monkeypatch, tmp_path):
    installed(tmp_path)
    servers = Servers(monkeypatch, running=PODS)
    run(dict(pods=PODS, run_dir=str(tmp_path), udp_port=8053))
    assert servers.actions() == [("lab-pod1", "start"), ("lab-pod2", "start"), ("lab-pod3", "start")]
    assert servers.calls[0][9:13] == ["--port", "8080", "--udp-port", "8053"]
    servers.calls, servers.udp_port = [], 8053
    assert not run(dict(pods=PODS, run_dir=str(tmp_path), udp_port=8053)).result["changed"]


def test_the_server_answers_a_datagram_with_the_pod_and_the_client_it_saw():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    threading.Thread(target=server.serve_datagrams, args=(listener, "pod2"), daemon=True).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.bind(("127.0.0.1", 0))
    client.sendto(b"?", listener.getsockname())
    answer, source = client.recvfrom(2048)
    assert answer == ("pod=pod2 client=127.0.0.1:%d\n" % client.getsockname()[1]).encode()
    assert source == listener.getsockname()
    client.close()


def test_the_udp_port_is_part_of_a_servers_settings():
    with_udp = server.parser().parse_args(["start", "--pidfile", "/p", "--name", "pod1", "--udp-port", "8053"])
    without = server.parser().parse_args(["start", "--pidfile", "/p", "--name", "pod1"])
    assert server.settings(with_udp) != server.settings(without)
    assert server.settings(with_udp)[-1] == 8053


def test_servers_running_as_declared_start_nothing(monkeypatch, tmp_path):
    installed(tmp_path)
    servers = Servers(monkeypatch, running=PODS)
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path)))
    assert not outcome.result["changed"] and servers.calls == [] and outcome.result["commands"] == []


def test_only_the_missing_or_differently_started_servers_are_started(monkeypatch, tmp_path):
    installed(tmp_path)
    servers = Servers(monkeypatch, running=["pod1"], other=["pod2"])
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path)))
    # The server's own start replaces one that runs with other settings.
    assert servers.actions() == [("lab-pod2", "start"), ("lab-pod3", "start")]
    assert outcome.result["started"] == ["pod2", "pod3"]


def test_a_new_script_restarts_the_running_servers(monkeypatch, tmp_path):
    (tmp_path / "lab_pod_server.py").write_text("# an older version\n")
    servers = Servers(monkeypatch, running=["pod1", "pod2"])
    run(dict(pods=PODS, run_dir=str(tmp_path)))
    assert servers.actions() == [("lab-pod1", "restart"), ("lab-pod2", "restart"), ("lab-pod3", "start")]
    assert (tmp_path / "lab_pod_server.py").read_text() == inspect.getsource(server)


def test_a_held_pod_is_neither_started_nor_serving(monkeypatch, tmp_path):
    installed(tmp_path)
    (tmp_path / "pod2.stopped").touch()
    servers = Servers(monkeypatch)
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path)))
    assert outcome.result["held"] == ["pod2"] and outcome.result["serving"] == ["pod1", "pod3"]
    assert servers.actions() == [("lab-pod1", "start"), ("lab-pod3", "start")]


def test_check_mode_says_what_it_would_start_and_writes_nothing(monkeypatch, tmp_path):
    servers = Servers(monkeypatch)
    (tmp_path / "pod3.stopped").touch()
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path)), check_mode=True)
    assert outcome.result["changed"] and servers.calls == [] and not (tmp_path / "lab_pod_server.py").exists()
    assert outcome.result["started"] == ["pod1", "pod2"] and outcome.result["serving"] == ["pod1", "pod2"]


def test_a_server_that_does_not_start_fails_naming_its_pod(monkeypatch, tmp_path):
    installed(tmp_path)
    Servers(monkeypatch)
    monkeypatch.setattr(basic.AnsibleModule, "run_command",
                        lambda self, argv, **_kw: (1, "", "pod1: cannot listen on port 8080: Address in use\n"))
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path)))
    assert outcome.failed and outcome.result["msg"].startswith("the server of pod pod1 did not start: pod1: cannot listen")


def test_a_relative_run_dir_is_refused_by_name(monkeypatch):
    servers = Servers(monkeypatch)
    outcome = run(dict(pods=PODS, run_dir="run"))
    assert outcome.failed and outcome.result["field"] == "run_dir" and servers.calls == []


def test_absent_ends_every_known_server_by_its_pidfile_and_deletes_the_run_dir(monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    installed(run_dir)
    for name in ("pod1.pid", "pod4.pid", "pod4.log", "pod5.stopped"):
        (run_dir / name).write_text("100\n")
    servers = Servers(monkeypatch, running=["pod1", "pod2", "pod4"])
    stopped = []
    monkeypatch.setattr(lab_pod_servers, "stop_all", lambda servers: stopped.extend(servers) or [])
    outcome = run(dict(state="absent", pods=PODS, run_dir=str(run_dir)))
    assert outcome.result["found"] == ["pod1", "pod4", "pod5"]
    assert outcome.result["stopped"] == ["pod1", "pod2", "pod4"]
    assert stopped == [(100, str(run_dir / name)) for name in ("pod1.pid", "pod2.pid", "pod4.pid")]
    assert outcome.result["changed"] and not run_dir.exists() and servers.calls == []
    assert outcome.result["commands"][-1] == "rm -r %s" % run_dir


def test_stop_all_signals_every_server_before_waiting_and_kills_the_stubborn(monkeypatch):
    up, signals = {40, 41}, []

    def kill(pid, signum):
        signals.append((pid, signum))
        if signum == signal.SIGKILL or pid == 40:
            up.discard(pid)

    monkeypatch.setattr(lab_pod_servers.os, "kill", kill)
    monkeypatch.setattr(server, "is_server", lambda pid, _pidfile: pid in up)
    assert lab_pod_servers.stop_all([(40, "/run/x/pod1.pid"), (41, "/run/x/pod2.pid")], grace=0.1) == []
    term, kill_signal = signal.SIGTERM, signal.SIGKILL
    assert signals == [(40, term), (41, term), (41, kill_signal)]


def test_stop_all_gives_up_on_a_process_that_outlives_its_sigkill_and_names_it(monkeypatch):
    def kill(pid, signum):
        if pid == 41:
            raise ProcessLookupError  # ended on its own in between
    monkeypatch.setattr(lab_pod_servers.os, "kill", kill)
    monkeypatch.setattr(server, "is_server", lambda pid, _pidfile: pid == 40)
    assert lab_pod_servers.stop_all([(40, "/run/x/pod1.pid"), (41, "/run/x/pod2.pid")], grace=0.05) == [40]


def test_absent_in_check_mode_ends_nothing_and_deletes_nothing(monkeypatch, tmp_path):
    installed(tmp_path)
    Servers(monkeypatch, running=["pod1"])
    monkeypatch.setattr(lab_pod_servers, "stop_all", lambda servers: pytest.fail("stopped %s in check mode" % servers))
    outcome = run(dict(state="absent", pods=PODS, run_dir=str(tmp_path)), check_mode=True)
    assert outcome.result["changed"] and outcome.result["stopped"] == ["pod1"]
    assert (tmp_path / "lab_pod_server.py").exists()


def test_absent_when_nothing_is_left_changes_nothing(monkeypatch, tmp_path):
    Servers(monkeypatch)
    outcome = run(dict(state="absent", pods=PODS, run_dir=str(tmp_path / "gone")))
    assert not outcome.result["changed"] and outcome.result["commands"] == [] and outcome.result["found"] == []


PROBE = dict(netns="lab-node", addresses={"pod1": "10.0.0.2", "pod2": "10.0.0.3", "pod3": "10.0.0.4"})


class ProbedServers(Servers):
    """Servers whose probe (one curl, inside the node) gets an answer only from ``answering``."""

    def __init__(self, monkeypatch, answering=(), **kwargs):
        super().__init__(monkeypatch, **kwargs)
        self.answering, self.probes = set(answering), []

    def run_command(self, argv, **kwargs):
        if "curl" not in argv:
            return super().run_command(argv, **kwargs)
        self.probes.append(argv)
        urls = [arg for arg in argv if arg.startswith("http://")]
        return 7, "".join("%s %s\n" % (url, "200" if url.split("//")[1].split(":")[0] in self.answering else "000")
                          for url in urls), ""


def test_the_probe_asks_every_serving_pod_at_once_from_the_node(monkeypatch, tmp_path):
    installed(tmp_path)
    (tmp_path / "pod2.stopped").touch()
    servers = ProbedServers(monkeypatch, running=PODS, answering=["10.0.0.2"])
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path), probe=PROBE))
    assert len(servers.probes) == 1 and servers.probes[0][:5] == ["ip", "netns", "exec", "lab-node", "curl"]
    assert [arg for arg in servers.probes[0] if arg.startswith("http://")] == ["http://10.0.0.2:8080/", "http://10.0.0.4:8080/"]
    assert outcome.result["ready"] == ["pod1"] and not outcome.result["changed"]


def test_in_check_mode_every_serving_pod_counts_as_ready_unprobed(monkeypatch, tmp_path):
    installed(tmp_path)
    (tmp_path / "pod3.stopped").touch()
    servers = ProbedServers(monkeypatch, running=["pod1"], answering=["10.0.0.2"])
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path), probe=PROBE), check_mode=True)
    assert servers.probes == [] and outcome.result["ready"] == ["pod1", "pod2"]


def test_without_a_probe_nothing_is_probed(monkeypatch, tmp_path):
    installed(tmp_path)
    servers = ProbedServers(monkeypatch, running=PODS, answering=["10.0.0.2"])
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path)))
    assert servers.probes == [] and "ready" not in outcome.result


def test_a_probe_timeout_under_a_second_is_refused_by_name(monkeypatch, tmp_path):
    ProbedServers(monkeypatch)
    outcome = run(dict(pods=PODS, run_dir=str(tmp_path), probe=dict(PROBE, timeout=0)))
    assert outcome.failed and outcome.result["field"] == "probe.timeout"


def test_documentation_matches_argument_spec():
    import yaml  # pylint: disable=import-outside-toplevel

    yaml.safe_load(lab_pod_servers.EXAMPLES)
    assert set(yaml.safe_load(lab_pod_servers.RETURN)) == {"serving", "ready", "held", "started", "stopped", "found", "commands"}
    documented = yaml.safe_load(lab_pod_servers.DOCUMENTATION)["options"]
    assert {name: option["type"] for name, option in documented.items()} == \
        {name: option["type"] for name, option in lab_pod_servers.ARGUMENT_SPEC.items()}
