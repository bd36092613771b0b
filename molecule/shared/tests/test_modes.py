"""kube-proxy's modes in a running node: switching between every mode this kernel can run
leaves no residue of the others and keeps every path working; ClientIP affinity (and in
IPVS mode the sh scheduler) keeps one client on one pod; the module alone programs a
Service's changing endpoints, and a repeated sync changes nothing.

Each step re-runs only the lab_proxy role (``--tags lab_proxy``) with another mode or
Service definition; the test always puts the scenario's own mode back, so the teardown and
the host-safety check that follow see the lab as converge built it.
"""

import os

from conftest import PROJECT, Answers, finish, load_lab, module_args, play, sources, start_module
from test_classroom import programmed
from test_lab import kernel_probability

STICKY_REQUESTS = 20
# Source ports above Linux's ephemeral range (32768-60999), each used once per scenario:
# a new connection whose source port matches an earlier one still in IPVS's connection
# table (TIME_WAIT, 120 s) reuses that entry's real server instead of being scheduled,
# which would make a random port look like the scheduler spreading one client.
STICKY_FIRST_PORT = 61000
# A Service's endpoint count at each sync: the first sync, up, down, back.
ENDPOINT_COUNTS = [3, 5, 2, 3]


def kernel_modes(host, lab):
    modes = ["iptables"]
    if host.run(os.path.join(PROJECT, "tools", "kernel-has-ipvs")).rc == 0:
        modes.append("ipvs")
    # A kernel can list nf_tables yet lack its ip family (the user-mode-linux node's does):
    # ask whether an ip table could be added (-c: checked by the kernel, not committed).
    if host.run("ip netns exec %s nft -c add table ip kube-proxy", lab["node_netns"]).rc == 0:
        modes.append("nftables")
    return modes


def data_plane(host, node):
    """What of each mode's state the node holds now."""
    saved = host.check_output("ip netns exec %s iptables-save", node)
    chains = {line[1:].split()[0] for line in saved.splitlines() if line.startswith(":KUBE-")}
    servers = []
    if host.file("/sys/module/ip_vs").exists:
        servers = [line for line in host.check_output("ip netns exec %s ipvsadm-save -n", node).splitlines()
                   if line.startswith("-A")]
    ipsets = host.run("ip netns exec %s ipset list -n", node)
    return dict(
        kube_chains=chains,
        service_chains=sorted(chain for chain in chains if chain.startswith(("KUBE-SVC-", "KUBE-SEP-"))),
        virtual_servers=servers,
        kube_ipvs0=host.run("ip netns exec %s ip link show kube-ipvs0", node).rc == 0,
        kube_ipsets=sorted(name for name in ipsets.stdout.split() if name.startswith("KUBE-")) if ipsets.rc == 0 else [],
        nft_table=host.run("ip netns exec %s nft list table ip kube-proxy", node).rc == 0,
    )


def residue(mode, plane):
    """The parts of the node's state that do not belong to ``mode``."""
    foreign = []
    if mode != "iptables" and plane["service_chains"]:
        foreign.append("KUBE-SVC/SEP chains: %s" % plane["service_chains"])
    if mode == "nftables" and plane["kube_chains"]:
        foreign.append("KUBE-* chains: %s" % sorted(plane["kube_chains"]))
    if mode != "ipvs":
        for part in ("virtual_servers", "kube_ipvs0", "kube_ipsets"):
            if plane[part]:
                foreign.append("%s: %s" % (part, plane[part]))
    if mode != "nftables" and plane["nft_table"]:
        foreign.append("table ip kube-proxy")
    return foreign


def own_state_missing(mode, plane):
    expected = {
        "iptables": bool(plane["service_chains"]),
        "ipvs": bool(plane["virtual_servers"]) and plane["kube_ipvs0"]
        and plane["kube_ipsets"] == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK"],
        "nftables": plane["nft_table"],
    }
    return not expected[mode]


def unreached(host, lab):
    """Sources from which some pod never answered, with the pods they did reach."""
    answers = Answers(host, lab)
    pods = {pod["name"] for pod in lab["pods"]}
    missing = {}
    for source in sources(lab):
        seen = {answer["pod"] for answer in answers(source) if answer}
        if seen != pods:
            missing[source] = sorted(seen)
    return missing


def test_switching_modes_leaves_no_residue(host, lab):
    mode = lab["mode"]
    others = [other for other in kernel_modes(host, lab) if other != mode]
    assert others, "this kernel runs only mode %s: nothing to switch to" % mode
    steps = [others[0], mode, others[0]] + [step for other in others[1:] for step in (other, mode)]
    if steps[-1] != mode:
        steps.append(mode)
    try:
        for step, step_mode in enumerate(steps, start=1):
            play("lab.yml", "--tags", "lab_proxy", mode=step_mode)
            plane = data_plane(host, lab["node_netns"])
            where = "step %d (%s, after %s)" % (step, step_mode, " -> ".join([mode] + steps[:step - 1]))
            assert not residue(step_mode, plane), "%s: left over: %s" % (where, residue(step_mode, plane))
            assert not own_state_missing(step_mode, plane), "%s: state missing: %s" % (where, plane)
            assert not unreached(host, lab), "%s: pods not reached from %s" % (where, unreached(host, lab))
    finally:
        play("lab.yml", "--tags", "lab_proxy", mode=mode)


def sticky_services(lab):
    return [dict(service, session_affinity="ClientIP") for service in lab["services"]]


def pytest_generate_tests(metafunc):
    if "setting" in metafunc.fixturenames:
        # Source hashing is an IPVS scheduler; the other modes have only affinity.
        ipvs_only = ["sh scheduler"] if load_lab()["mode"] == "ipvs" else []
        metafunc.parametrize("setting", ["ClientIP affinity"] + ipvs_only)


def test_one_client_stays_on_one_pod(host, lab, setting):
    overrides = dict(mode=lab["mode"])
    if setting == "ClientIP affinity":
        overrides["lab_proxy_services"] = sticky_services(lab)
    else:
        overrides["lab_proxy_ipvs_scheduler"] = "sh"
    service = lab["services"][0]
    url = "http://%s:%s/" % (service["cluster_ip"], service["port"])
    try:
        play("lab.yml", "--tags", "lab_proxy", **overrides)
        first_port = STICKY_FIRST_PORT + (0 if setting == "ClientIP affinity" else 2 * STICKY_REQUESTS)
        for number, source in enumerate((lab["client_netns"], lab["node_netns"])):
            pods = []
            for request in range(STICKY_REQUESTS):
                port = first_port + number * STICKY_REQUESTS + request
                result = host.run("ip netns exec %s curl -s --max-time 2 --local-port %s %s", source, str(port), url)
                assert result.rc == 0, "from %s: %s" % (source, result.stderr)
                pods.append(result.stdout.split()[0])
            assert len(set(pods)) == 1, "%s: %s spread over %s" % (setting, source, sorted(set(pods)))
    finally:
        play("lab.yml", "--tags", "lab_proxy", mode=lab["mode"])


def test_changed_endpoints_are_programmed_and_a_repeat_changes_nothing(host, lab, scratch_node, tmp_path):
    """The kube_proxy module alone, in the scenario's mode, on a namespace of the test's own:
    each sync programs the endpoints declared (iptables: with their probabilities) and a
    repeated sync changes nothing. This is the mode's part of scaling; the lab's own scaling
    (pods made and removed, readiness, traffic) holds whatever the mode and runs in scenario
    default (test_classroom's mode_independent tests)."""
    service = lab["services"][0]
    addresses = ["10.0.0.%d" % number for number in range(2, 2 + max(ENDPOINT_COUNTS))]
    node = dict(lab, node_netns=scratch_node)
    for step, count in enumerate(ENDPOINT_COUNTS, start=1):
        declared = dict(service, endpoints=addresses[:count])
        args = module_args(tmp_path, "step%d" % step, [declared], mode=lab["mode"])
        assert finish(start_module(args))["changed"], "step %d (%d endpoints) changed nothing" % (step, count)
        endpoints, probabilities = programmed(host, node, declared)
        assert sorted(endpoints) == sorted(addresses[:count]), "step %d: %d endpoints declared" % (step, count)
        if probabilities is not None:
            assert probabilities == [kernel_probability(count, i) for i in range(count - 1)] + [None]
        assert finish(start_module(args))["changed"] is False, "step %d: a repeated sync changed the node" % step
