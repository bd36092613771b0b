"""kube-proxy's health check server and the cloud load balancer that follows it
(make lab NODES=2 PODS=1|2 TYPE=LoadBalancer POLICY=Local), in the scenario's mode.

Every node answers app1's health check node port as kube-proxy does: 200 with its count of
app1's ready endpoints when it has one, 503 with 0 when it has none, with kube-proxy's headers
and body. The lab's load balancer asks every node from the client, as a cloud load balancer's
checker does from outside the cluster, and routes the LB IP only via the nodes answering 200.

Runs in every mode: natively in scenarios default and nftables, in the user-mode-linux node in
scenario ipvs-classroom. Each test goes on from the lab the one before left (one pod, two pods,
back to ClusterIP): a build costs a minute in the user-mode-linux node. The module's fixture
puts the scenario's one-node ClusterIP lab back afterwards, in a finally.
"""

import re

from conftest import changed_tasks, curl, play
from test_cluster import answers_until_every_pod

LAYOUT = dict(nodes=2, service_type="LoadBalancer", traffic_policy="Local")
# kube-proxy's body (pkg/proxy/healthcheck/service_health.go): dedented tabs, no final newline.
BODY = '{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "app1"\n\t},\n' \
       '\t"localEndpoints": %d,\n\t"serviceProxyHealthy": true\n}'


def build(lab, pods, **changes):
    return play("lab.yml", mode=lab["mode"], **dict(LAYOUT, pods=pods, **changes))


def health(host, lab, node):
    """The client's health check of node: (status, headers, body); status None: no answer."""
    result = host.run("ip netns exec %s curl -s -i --max-time 2 http://%s:%s/", lab["client_netns"], node["ip"],
                      str(lab["health_check_node_port"]))
    if result.rc != 0:
        return None, {}, result.rc
    head, _blank, body = result.stdout.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_health(host, lab, node, status, local_endpoints):
    got, headers, body = health(host, lab, node)
    assert got == status, "%s's health check answered %s: %s" % (node["netns"], got, body)
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == str(local_endpoints)
    assert body == BODY % local_endpoints


def lb_route(host, lab):
    """The client's route to the LB IP, as (gateways, multipath): ([], False) when there is none."""
    shown = host.check_output("ip -n %s route show %s", lab["client_netns"], lab["load_balancer_ip"])
    print("ip -n %s route show %s\n%s" % (lab["client_netns"], lab["load_balancer_ip"], shown))
    return re.findall(r"via (\S+)", shown), "nexthop" in shown


def lb_url(lab):
    return "http://%s:%s/" % (lab["load_balancer_ip"], lab["services"][0]["port"])


def health_pids(host, lab):
    """{pidfile: pid} of the health check servers' pidfiles."""
    listing = host.run("ls %s/health", lab["run_dir"])
    names = [name for name in listing.stdout.split() if name.endswith(".pid")] if listing.rc == 0 else []
    return {name: int(host.file("%s/health/%s" % (lab["run_dir"], name)).content_string.strip()) for name in names}


def is_health_server(host, pid):
    """Whether pid is a live (not zombie) health check server; its number may be another's by now."""
    stat = host.run("cat /proc/%s/stat", str(pid))
    cmdline = host.file("/proc/%d/cmdline" % pid)
    if stat.rc != 0 or stat.stdout.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return cmdline.exists and "--health-file" in cmdline.content_string.split("\0")


def running_health_servers(host):
    """The pids of every process on the host whose command line is a health check server."""
    # [-]: the pattern matches no command line of its own (the shell's, grep's)
    found = host.run("grep -l -a -e '--health[-]file' /proc/[0-9]*/cmdline")
    return sorted(int(path.split("/")[2]) for path in found.stdout.split() if path.split("/")[2] != "self")


def test_only_the_node_with_the_pod_is_healthy_and_the_lb_routes_via_it(host, lab, cluster):
    build(lab, pods=1)
    first, second = cluster["nodes"][:2]
    assert_health(host, lab, first, 200, 1)
    assert_health(host, lab, second, 503, 0)
    assert lb_route(host, lab) == ([first["ip"]], False)
    # Local: the node keeps the client's address, and sends only to its own pod.
    client_ip = lab["client_address"].split("/")[0]
    seen = [curl(host, lab["client_netns"], lb_url(lab)) for _ in range(6)]
    assert seen == [dict(pod="pod1", ip=client_ip, port=answer["port"]) for answer in seen if answer], seen
    assert len(seen) == 6


def test_a_pod_on_each_node_makes_both_healthy_and_the_route_multipath(host, lab, cluster):
    """On the last test's lab (one pod, on the first node), a second pod, on the second node."""
    before = health_pids(host, lab)
    build(lab, pods=2)
    first, second = cluster["nodes"][:2]
    assert_health(host, lab, first, 200, 1)
    assert_health(host, lab, second, 200, 1)
    # The new count is read from the health file: the servers kept running.
    assert health_pids(host, lab) == before and len(before) == 2
    assert lb_route(host, lab) == ([first["ip"], second["ip"]], True)
    pods = [pod for pod in cluster["pods"] if pod["name"] in ("pod1", "pod2")]
    seen = answers_until_every_pod(host, lab["client_netns"], lb_url(lab), pods)
    assert None not in seen and {answer["pod"] for answer in seen} == {"pod1", "pod2"}, seen
    assert {answer["ip"] for answer in seen} == {lab["client_address"].split("/")[0]}
    again = build(lab, pods=2)
    assert changed_tasks(again.stdout) is None, "a second identical run changed %s" % changed_tasks(again.stdout)


def test_back_to_cluster_ip_no_health_server_and_no_route_are_left(host, lab, cluster):
    """On the last test's lab (two pods, one per node)."""
    servers = health_pids(host, lab)
    assert sorted(servers.values()) == running_health_servers(host) and len(servers) == 2
    assert all(is_health_server(host, pid) for pid in servers.values())
    build(lab, pods=2, service_type="ClusterIP", traffic_policy="Cluster")
    assert health_pids(host, lab) == {}
    assert not host.file("%s/health" % lab["run_dir"]).exists, "the health check servers left their directory behind"
    assert running_health_servers(host) == []
    for pid in servers.values():
        assert not is_health_server(host, pid), "health check server pid %d still runs" % pid
    assert lb_route(host, lab) == ([], False)
    status, _headers, rc = health(host, lab, cluster["nodes"][0])
    assert status is None and rc == 7, "the health check node port still answers"  # 7: connection refused
