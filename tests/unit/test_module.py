"""library/kube_proxy.py main(): parameters, commands (run_command patched), check and diff mode."""

import importlib.util
import json

import pytest
import yaml
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from conftest import FIXTURES, LIBRARY
from lab_services import APP1

spec = importlib.util.spec_from_file_location("kube_proxy_module", LIBRARY / "kube_proxy.py")
kube_proxy_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kube_proxy_module)

LIVE_SAVE = (FIXTURES / "iptables-nft-save.txt").read_text()


class Exit(Exception):
    def __init__(self, failed, result):
        super().__init__(result.get("msg", ""))
        self.failed = failed
        self.result = result


@pytest.fixture(autouse=True)
def capture_exit(monkeypatch):
    def exit_json(self, **result):
        raise Exit(False, result)

    def fail_json(self, msg, **result):
        raise Exit(True, dict(result, msg=msg))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


@pytest.fixture
def netns_exists(monkeypatch, tmp_path):
    (tmp_path / "lab-node").touch()
    monkeypatch.setattr(kube_proxy_module, "NETNS_DIR", str(tmp_path))


class FakeNode:
    """Answers run_command like a node whose iptables-save prints ``save``."""

    def __init__(self, save="", fail_on=None):
        self.save = save
        self.fail_on = fail_on
        self.calls = []

    def __call__(self, argv, data=None, binary_data=False, **_kwargs):
        self.calls.append((argv, data))
        command = argv[4]
        if command == self.fail_on:
            return 1, "", "%s: something broke" % command
        if command == "iptables-save":
            return 0, self.save, ""
        if command == "iptables":
            return 0, "iptables v1.8.9 (nf_tables)\n", ""
        return 0, "", ""

    def commands(self):
        return [argv[4:] for argv, _data in self.calls]


def run(monkeypatch, args, node, check_mode=False, diff=False):
    monkeypatch.setattr(basic.AnsibleModule, "run_command", node)
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    if diff:
        args = dict(args, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(Exit) as caught:
            kube_proxy_module.main()
    return caught.value


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
    assert ["iptables-restore", "--noflush"] not in node.commands()
    assert outcome.result["diff"]["before"] == ""
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in outcome.result["diff"]["after"]


def test_matching_live_state_changes_nothing(monkeypatch, netns_exists):
    mixed = [dict(APP1),
             dict(namespace="ns1", name="svc1", port_name="p80", cluster_ip="172.30.0.41", port=80,
                  endpoints=["10.180.0.1"], session_affinity="ClientIP", session_affinity_timeout=3600),
             dict(name="gone", cluster_ip="10.96.0.11", port=53, protocol="UDP")]
    node = FakeNode(save=LIVE_SAVE)
    outcome = run(monkeypatch, app1_args(services=mixed), node)
    assert outcome.result["changed"] is False
    assert node.commands() == [["iptables-save"]]


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


@pytest.mark.parametrize("mode", ["ipvs", "nftables"])
def test_modes_not_built_yet_say_so(monkeypatch, netns_exists, mode):
    node = FakeNode()
    outcome = run(monkeypatch, app1_args(mode=mode), node)
    assert outcome.failed
    assert "not implemented yet" in outcome.result["msg"]
    assert node.calls == []


def test_failing_command_names_itself_and_the_namespace(monkeypatch, netns_exists):
    outcome = run(monkeypatch, app1_args(), FakeNode(fail_on="iptables-restore"))
    assert outcome.failed
    assert outcome.result["msg"] == "iptables-restore failed in network namespace lab-node: iptables-restore: something broke"
    assert outcome.result["rc"] == 1


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


def test_documentation_matches_argument_spec():
    _compare(_documented_options(), kube_proxy_module.ARGUMENT_SPEC, "options")


def test_examples_and_return_are_valid_yaml():
    examples = yaml.safe_load(kube_proxy_module.EXAMPLES)
    assert all("kube_proxy" in task for task in examples)
    returned = yaml.safe_load(kube_proxy_module.RETURN)
    assert {"rules", "changed_chains", "deleted_chains", "mode", "netns"} <= set(returned)
    json.dumps(returned)
