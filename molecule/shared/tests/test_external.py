"""Traffic from outside (make lab NODES=2 PODS=4 TYPE=NodePort|LoadBalancer POLICY=Cluster|Local),
in the scenario's mode: app1 as a NodePort or LoadBalancer Service, reached from the client at
every node IP on the node port, at its external IP and at its load balancer IP (both routed by
the client via the first node), with each traffic policy.

Runs in every mode: natively in scenarios default and nftables, in the user-mode-linux node in
scenario ipvs-classroom. The module's fixture puts the scenario's one-node ClusterIP lab back
afterwards, in a finally.
"""

import re

from conftest import changed_tasks, curl, play
from test_cluster import answers_until_every_pod
from test_exercises import bridge_address

CLUSTER_LAYOUT = {"nodes": 2, "pods": 4}

EXCLUDING_THE_CLIENT = "203.0.113.0/24"   # TEST-NET-3: not the LAN
INCLUDING_THE_CLIENT = "192.168.100.0/24"  # the LAN, the client's 192.168.100.2 with it
OBSERVE_COUNT = 60  # each of 4 pods missing all 60 requests: (3/4)**60, about 3e-8
# a pod's row: name, ip, node, count, share, expected share ("?" where no one node's rules were read), addresses seen
OBSERVE_ROW = re.compile(r"^\s+(?P<pod>pod\d+)\s+(?P<ip>[0-9.]+)\s+(?P<node>\S+)\s+(?P<count>\d+)\s+[0-9.]+ %"
                         r"\s+(?:[0-9.]+ %|\?)\s+(?P<seen>.*)$")


def build(lab, service_type, traffic_policy="Cluster", **layout):
    layout = dict(CLUSTER_LAYOUT, **layout)
    play("lab.yml", mode=lab["mode"], service_type=service_type, traffic_policy=traffic_policy, **layout)


def external_urls(lab):
    app1 = lab["services"][0]
    return {"external IP": "http://%s:%s/" % (lab["external_ip"], app1["port"]),
            "load balancer IP": "http://%s:%s/" % (lab["load_balancer_ip"], app1["port"])}


def node_port_url(lab, node):
    return "http://%s:%s/" % (node["ip"], lab["node_port"])


def test_a_node_port_on_every_node_reaches_every_pod_masqueraded_with_the_cluster_policy(host, lab, cluster):
    """Each node DNATs to any pod and masquerades (the pod may be on another node): its own
    pods see its bridge address, the other node's pods its node IP."""
    build(lab, "NodePort")
    for node in cluster["nodes"]:
        seen = answers_until_every_pod(host, lab["client_netns"], node_port_url(lab, node), cluster["pods"])
        assert None not in seen, "a request to %s failed" % node_port_url(lab, node)
        assert {answer["pod"] for answer in seen} == {pod["name"] for pod in cluster["pods"]}
        want = {pod["name"]: bridge_address(node) if pod["node"] == node["netns"] else node["ip"]
                for pod in cluster["pods"]}
        wrong = sorted({"%s saw %s" % (a["pod"], a["ip"]) for a in seen if a["ip"] != want[a["pod"]]})
        assert not wrong, "via %s: %s (expected %s)" % (node["netns"], wrong, want)
    seen = answers_until_every_pod(host, lab["client_netns"], external_urls(lab)["external IP"], cluster["pods"])
    assert None not in seen and {a["pod"] for a in seen} == {pod["name"] for pod in cluster["pods"]}


def test_a_pod_reaches_a_node_port_of_its_own_node(host, lab, cluster):
    first = cluster["pods"][0]
    node = next(node for node in cluster["nodes"] if node["netns"] == first["node"])
    answer = curl(host, first["netns"], node_port_url(lab, node))
    assert answer is not None, "%s could not reach %s" % (first["name"], node_port_url(lab, node))


def test_the_local_policy_keeps_the_client_address_and_the_node_s_own_pods(host, lab, cluster):
    """externalTrafficPolicy=Local: a node sends outside traffic only to its own pods, not
    masqueraded; the external IP, routed via the first node, reaches the first node's pods."""
    build(lab, "NodePort", "Local")
    client_ip = lab["client_address"].split("/")[0]
    for node in cluster["nodes"]:
        local = [pod for pod in cluster["pods"] if pod["node"] == node["netns"]]
        seen = answers_until_every_pod(host, lab["client_netns"], node_port_url(lab, node), local)
        assert None not in seen
        assert {a["pod"] for a in seen} == {pod["name"] for pod in local}, node["netns"]
        assert {a["ip"] for a in seen} == {client_ip}, seen
    first = cluster["nodes"][0]
    on_first = [pod for pod in cluster["pods"] if pod["node"] == first["netns"]]
    seen = answers_until_every_pod(host, lab["client_netns"], external_urls(lab)["external IP"], on_first)
    assert {a["pod"] for a in seen if a} == {pod["name"] for pod in on_first}


def test_a_node_without_local_pods_drops_what_comes_from_outside(host, lab, cluster):
    """One pod, on the first node: the second node's node port takes the connection attempt
    and it dies there (curl times out; no refusal), while the first node's still answers.
    iptables and nftables drop it; IPVS sends it on to the other node's pod unmasqueraded
    (kube-proxy lets the node's own pods reach the Service so, kubernetes#97081), and the pod's
    reply, from its own address, goes straight to the client, which takes it for no connection."""
    build(lab, "NodePort", "Local", pods=1)
    first, second = cluster["nodes"][:2]
    result = host.run("ip netns exec %s curl -s --max-time 2 %s", lab["client_netns"], node_port_url(lab, second))
    assert result.rc == 28, "expected a time-out (dropped), got curl exit %d: %s" % (result.rc, result.stdout)
    assert curl(host, lab["client_netns"], node_port_url(lab, first)) is not None


def test_a_load_balancer_ip_reaches_the_service_from_inside_its_source_ranges(host, lab, cluster):
    build(lab, "LoadBalancer", source_ranges=INCLUDING_THE_CLIENT)
    seen = answers_until_every_pod(host, lab["client_netns"], external_urls(lab)["load balancer IP"], cluster["pods"])
    assert None not in seen and {a["pod"] for a in seen} == {pod["name"] for pod in cluster["pods"]}


def test_a_second_run_changes_nothing(host, lab, cluster):
    # host, though unused, keeps this test in file order: pytest runs the tests parametrized by
    # testinfra's host together, and a test without it after them all.
    result = play("lab.yml", mode=lab["mode"], service_type="LoadBalancer", traffic_policy="Cluster",
                  source_ranges=INCLUDING_THE_CLIENT, **CLUSTER_LAYOUT)
    changed = changed_tasks(result.stdout)
    assert changed is None, "the second run changed: %s" % changed


def test_observe_a_node_port_and_the_load_balancer_ip_from_the_client(host, lab, cluster):
    """On the lab of test_a_second_run (LoadBalancer, Cluster policy, source ranges holding the client):
    observe names every pod and the address it saw, masqueraded by the node that DNATs (its own
    pods see its bridge address, the other node's pods its node IP). For a node port that is the
    node port's node, whose rules it reads; for the load balancer IP, whichever node the client's
    route sends a connection via (one node, or any of them behind the load balancer's multipath
    route, where observe leaves the one node's counters and path out and says so)."""
    first, second = cluster["nodes"][:2]
    targets = [("node-port", second, node_port_url(lab, second)),
               ("load-balancer", None, external_urls(lab)["load balancer IP"])]
    # In the user-mode-linux node one target is enough (observe's IPVS path is one for both;
    # the load balancer's multipath route is checked natively): each costs minutes there.
    for target, node, url in targets[:1] if lab["mode"] == "ipvs" else targets:
        extra = {"node": node["netns"]} if node else {}
        output = play("playbooks/observe.yml", target=target, source="client", count=OBSERVE_COUNT, **extra).stdout
        assert "%d requests from client to %s (default/app1, mode %s)" % (OBSERVE_COUNT, url, lab["mode"]) in output, output
        handled = re.search(r"so (\S+)'s kube-proxy rules handle the connection\)", output)
        if node:
            assert handled and handled.group(1) == node["netns"], output
        else:
            assert handled or "(a multipath route: the kernel picks a node per connection)" in output, output
        handlers = [node] if node else [n for n in cluster["nodes"] if not handled or n["netns"] == handled.group(1)]
        rows = {match["pod"]: match for match in map(OBSERVE_ROW.match, output.splitlines()) if match}
        assert not re.search(r"^\s+failed\s+\d+", output, re.M), output
        for pod in cluster["pods"]:
            row = rows.get(pod["name"])
            assert row and int(row["count"]) > 0, "%s: no answer from %s in:\n%s" % (target, pod["name"], output)
            allowed = {bridge_address(n) if pod["node"] == n["netns"] else n["ip"] for n in handlers}
            saw = set(re.findall(r"([0-9.]+) \(\d+\)", row["seen"]))
            assert saw and saw <= allowed, "%s: %s saw %s, expected some of %s" % (target, pod["name"], saw, allowed)
        assert sum(int(row["count"]) for row in rows.values()) == OBSERVE_COUNT
        path = next((line.strip() for line in output.splitlines() if line.strip().startswith("path: ")), "")
        if not handled:
            assert not path and "leaves out the" in output, output
        elif lab["mode"] == "iptables":
            via = "KUBE-NODEPORTS -> KUBE-EXT-" if target == "node-port" else "KUBE-SERVICES -> KUBE-FW-"
            assert via in path and " -> DNAT 10.0." in path, path
        elif lab["mode"] == "nftables":
            assert "services -> external-" in path and " -> DNAT 10.0." in path, path


def test_source_ranges_that_exclude_the_client_drop_it_at_the_load_balancer_ip_only(host, lab, cluster):
    """loadBalancerSourceRanges guard the load balancer IP alone: the client, outside them, gets no
    answer there, while every node port and the external IP still answer it."""
    build(lab, "LoadBalancer", source_ranges=EXCLUDING_THE_CLIENT)
    lb_url = external_urls(lab)["load balancer IP"]
    result = host.run("ip netns exec %s curl -s --max-time 2 %s", lab["client_netns"], lb_url)
    assert result.rc != 0 and not result.stdout, "the client outside %s got %r (curl exit %d) from %s" % (
        EXCLUDING_THE_CLIENT, result.stdout, result.rc, lb_url)
    for node in cluster["nodes"]:
        assert curl(host, lab["client_netns"], node_port_url(lab, node)) is not None, node_port_url(lab, node)
    assert curl(host, lab["client_netns"], external_urls(lab)["external IP"]) is not None
    lb = lab["load_balancer_ip"]
    for node in cluster["nodes"]:
        if lab["mode"] == "iptables":
            nat = host.check_output("ip netns exec %s iptables-save -t nat", node["netns"]).splitlines()
            to_fw = [line for line in nat if re.search(r"-j KUBE-FW-\S+$", line)]
            assert len(to_fw) == 1 and "-d %s/32 " % lb in to_fw[0], to_fw
            fw = to_fw[0].split("-j ")[-1]
            assert any(line.startswith("-A %s -s %s " % (fw, EXCLUDING_THE_CLIENT)) and "-j KUBE-EXT-" in line
                       for line in nat), nat
            assert all("KUBE-EXT-" in line for line in nat if line.startswith("-A KUBE-NODEPORTS ")), nat
            drop = host.check_output("ip netns exec %s iptables-save -t filter", node["netns"])
            assert re.search(r"^-A KUBE-PROXY-FIREWALL -d %s/32 .* -j DROP$" % re.escape(lb), drop, re.M), drop
        elif lab["mode"] == "nftables":
            firewall = host.check_output("ip netns exec %s nft list map ip kube-proxy firewall-ips", node["netns"])
            keys = re.findall(r"([0-9.]+) \. tcp \. \d+ : goto firewall-", firewall)
            assert keys == [lb], firewall
            nodeports = host.check_output("ip netns exec %s nft list map ip kube-proxy service-nodeports", node["netns"])
            assert "goto external-" in nodeports and "firewall-" not in nodeports, nodeports


def test_back_to_cluster_ip_leaves_nothing_of_the_external_rules(host, lab, cluster):
    build(lab, "ClusterIP")
    for node in cluster["nodes"]:
        if lab["mode"] == "iptables":
            saved = host.check_output("ip netns exec %s iptables-save", node["netns"])
            assert not [word for word in ("KUBE-EXT-", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL", "KUBE-FW-")
                        if word in saved], saved
        elif lab["mode"] == "ipvs":
            servers = host.check_output("ip netns exec %s ipvsadm -Ln", node["netns"])
            assert ":%s " % lab["node_port"] not in servers and lab["load_balancer_ip"] not in servers, servers
            sets = host.check_output("ip netns exec %s ipset list -n", node["netns"]).split()
            assert sorted(sets) == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK"], sets
            saved = host.check_output("ip netns exec %s iptables-save", node["netns"])
            assert "KUBE-IPVS-FILTER" not in saved and "KUBE-PROXY-FIREWALL" not in saved, saved
        else:
            table = host.check_output("ip netns exec %s nft list table ip kube-proxy", node["netns"])
            assert "external-" not in table and "service-nodeports" in table, table
    result = host.run("ip netns exec %s curl -s --max-time 2 %s", lab["client_netns"],
                      node_port_url(lab, cluster["nodes"][0]))
    assert result.rc != 0, "the node port still answers: %s" % result.stdout


def test_observe_refuses_a_target_the_running_service_does_not_have(host, lab, cluster):
    """Right after test_back_to_cluster_ip: app1 is a ClusterIP Service, read so from the node's rules."""
    result = play("playbooks/observe.yml", target="node-port", source="client", count=1, must_succeed=False)
    assert result.returncode != 0
    assert "target=node-port: default/app1 has no node port" in result.stdout, result.stdout[-3000:]
    assert "make lab TYPE=NodePort" in result.stdout
