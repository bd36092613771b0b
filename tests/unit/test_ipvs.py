"""IPVS mode: the renderer, the ipvsadm-save / ipset save / ip addr readers, and the planners."""

from conftest import GOLDEN
from kube_proxy import ipvs, sync
from lab_services import APP1, SVC1_AFFINITY, config

# As `ipvsadm-save -n` prints the lab's service (ipvsadm 1.31, Linux 6.1 in the UML node).
APP1_SAVED = """-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.0.0.2:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.0.0.3:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.0.0.4:8080 -m -w 1
"""


def ipvs_config(*services, **options):
    return config(*services, mode="ipvs", **options)


def test_render_matches_golden():
    rendered = sync.plan(ipvs_config(APP1, SVC1_AFFINITY), True, sync.Live(iptables_save="")).rules
    assert rendered == (GOLDEN / "ipvs-mixed.rules").read_text()


def test_one_virtual_server_per_service_port_with_masquerading_real_servers():
    state = ipvs.render(ipvs_config(APP1))
    (server,) = state.virtual_servers.values()
    assert server.service_args() == ["-t", "10.96.0.10:80", "-s", "rr"]
    assert {(real.endpoint, real.forwarding, real.weight) for real in server.real_servers} == {
        ("10.0.0.2:8080", "-m", 1), ("10.0.0.3:8080", "-m", 1), ("10.0.0.4:8080", "-m", 1)}
    assert state.addresses == {"10.96.0.10/32"}


def test_client_ip_affinity_is_persistence_and_mh_hashes_the_port():
    state = ipvs.render(ipvs_config(SVC1_AFFINITY, ipvs_scheduler="mh"))
    (server,) = state.virtual_servers.values()
    assert server.service_args() == ["-t", "172.30.0.41:80", "-s", "mh", "-b", "mh-port", "-p", "3600"]


def test_ipsets_hold_portals_and_hairpin_triples():
    sets = ipvs.render(ipvs_config(APP1)).ipsets
    assert sets["KUBE-CLUSTER-IP"] == ("hash:ip,port", {"10.96.0.10,tcp:80"})
    assert sets["KUBE-LOOP-BACK"] == ("hash:ip,port,ip", {
        "10.0.0.2,tcp:8080,10.0.0.2", "10.0.0.3,tcp:8080,10.0.0.3", "10.0.0.4,tcp:8080,10.0.0.4"})


def test_service_without_endpoints_keeps_its_vip_and_virtual_server():
    state = ipvs.render(ipvs_config(dict(APP1, endpoints=[])))
    assert state.addresses == {"10.96.0.10/32"}
    (server,) = state.virtual_servers.values()
    assert server.real_servers == frozenset()


def test_parse_ipvsadm_save_reads_back_what_render_wants():
    live = ipvs.parse_ipvsadm_save(APP1_SAVED)
    assert live == ipvs.render(ipvs_config(APP1)).virtual_servers
    assert ipvs.plan_virtual_servers(ipvs.render(ipvs_config(APP1)).virtual_servers, live) == []


def test_removed_endpoint_and_new_scheduler_are_edited_in_place():
    live = ipvs.parse_ipvsadm_save(APP1_SAVED)
    wanted = ipvs.render(ipvs_config(dict(APP1, endpoints=["10.0.0.2", "10.0.0.4", "10.0.0.5"]), ipvs_scheduler="lc"))
    assert ipvs.plan_virtual_servers(wanted.virtual_servers, live) == [
        "-E -t 10.96.0.10:80 -s lc",
        "-d -t 10.96.0.10:80 -r 10.0.0.3:8080",
        "-a -t 10.96.0.10:80 -r 10.0.0.5:8080 -m -w 1",
    ]


def test_stale_virtual_server_is_deleted_and_weight_fixed():
    live = ipvs.parse_ipvsadm_save(APP1_SAVED.replace("10.0.0.4:8080 -m -w 1", "10.0.0.4:8080 -m -w 5")
                                   + "-A -u 10.96.0.53:53 -s rr\n")
    wanted = ipvs.render(ipvs_config(APP1)).virtual_servers
    assert ipvs.plan_virtual_servers(wanted, live) == [
        "-D -u 10.96.0.53:53",
        "-e -t 10.96.0.10:80 -r 10.0.0.4:8080 -m -w 1",
    ]


def test_ipset_plan_creates_adds_deletes_and_destroys_last():
    live = ipvs.parse_ipset_save(
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1\n"
        "add KUBE-CLUSTER-IP 10.96.0.99,tcp:80\n"
        "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n"
        "create other-set hash:ip family inet\n"
    )
    assert set(live) == {"KUBE-CLUSTER-IP", "KUBE-NODE-PORT-TCP"}
    before, after = ipvs.plan_ipsets(ipvs.render(ipvs_config(APP1)).ipsets, live)
    assert before[:2] == ["del KUBE-CLUSTER-IP 10.96.0.99,tcp:80", "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80"]
    assert before[2] == "create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536"
    assert after == ["destroy KUBE-NODE-PORT-TCP"]


def test_addresses_follow_the_services():
    shown = ("7: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\\       valid_lft forever preferred_lft forever\n"
             "7: kube-ipvs0    inet 10.96.0.99/32 scope global kube-ipvs0\\       valid_lft forever preferred_lft forever\n")
    live = ipvs.parse_addresses(shown)
    assert live == {"10.96.0.10/32", "10.96.0.99/32"}
    assert ipvs.plan_addresses({"10.96.0.10/32"}, live) == ["address del 10.96.0.99/32 dev kube-ipvs0"]
    assert ipvs.plan_addresses({"10.96.0.10/32"}, None) == [
        "link add kube-ipvs0 type dummy", "address add 10.96.0.10/32 dev kube-ipvs0"]
    assert ipvs.plan_addresses(set(), live) == ["link del kube-ipvs0"]
    assert ipvs.plan_addresses(set(), None) == []


def test_leaving_ipvs_removes_servers_device_and_sets_after_the_rules():
    ipvs_rules = sync.plan(ipvs_config(APP1), True, sync.Live(iptables_save="")).steps
    restore = [data for step in ipvs_rules if step.name == "iptables" for _argv, data in step.commands][0]
    live = sync.Live(
        iptables_save=_saved(restore),
        ipset_save=ipvs.ipset_text(ipvs.render(ipvs_config(APP1)).ipsets),
        ipvsadm_save=APP1_SAVED,
        ipvs_device="7: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\n",
    )
    plan = sync.plan(config(APP1), True, live)
    commands = [(step.name, argv, data) for step in plan.steps for argv, data in step.commands]
    names = [name for name, _argv, _data in commands]
    assert names == ["iptables", "ipset", "ipvs", "kube-ipvs0"]
    assert commands[1][2] == "destroy KUBE-CLUSTER-IP\ndestroy KUBE-LOOP-BACK\n"
    assert commands[2][2] == "-D -t 10.96.0.10:80\n"
    assert commands[3][2] == "link del kube-ipvs0\n"
    assert "nat/KUBE-LOAD-BALANCER" in plan.deleted_chains


def test_ipvs_mode_sets_only_the_sysctls_that_differ():
    live = sync.Live(iptables_save="", sysctls={
        "net.ipv4.vs.conntrack": "0", "net.ipv4.vs.expire_nodest_conn": "1",
        "net.ipv4.vs.expire_quiescent_template": "1", "net.ipv4.ip_forward": "1"})
    (sysctl_step,) = [step for step in sync.plan(ipvs_config(APP1), True, live).steps if step.name == "sysctls"]
    assert sysctl_step.commands == [(("sysctl", "-w", "net.ipv4.vs.conntrack=1"), None)]


def _saved(restore_text):
    """A restore text turned into what iptables-save would print for it (enough for the parser)."""
    return "\n".join(
        line.replace("-I ", "-A ", 1).replace(" 1 -m", " -m", 1) if line.startswith("-I ") else line
        for line in restore_text.splitlines()
    ) + "\n"


def test_parse_reads_every_form_ipvsadm_save_prints():
    # Printed by ipvsadm-save -n in the user-mode-linux node after `ipvsadm -R` edits.
    live = ipvs.parse_ipvsadm_save(
        "-A -t 10.96.0.10:80 -s mh -b mh-port\n"
        "-a -t 10.96.0.10:80 -r 10.0.0.2:8080 -m -w 3\n"
        "-A -u 10.96.0.10:53 -s rr -p 60\n"
        "-A --sctp-service 10.96.0.10:80 -s rr\n"
    )
    assert set(live) == {("-t", "10.96.0.10:80"), ("-u", "10.96.0.10:53"), ("--sctp-service", "10.96.0.10:80")}
    tcp = live[("-t", "10.96.0.10:80")]
    assert (tcp.scheduler, tcp.scheduler_flags, tcp.persistence) == ("mh", "mh-port", None)
    assert tcp.real_servers == frozenset({ipvs.RealServer("10.0.0.2", 8080, weight=3)})
    assert live[("-u", "10.96.0.10:53")].persistence == 60
    assert live[("--sctp-service", "10.96.0.10:80")].proto == "sctp"


# The lab's app1 as `make lab NODES=2 TYPE=LoadBalancer POLICY=Local` declares it, seen from
# lab-node (one pod of its own, one on lab-node2), with the client's range as source range.
APP1_LOAD_BALANCER_LOCAL = dict(
    APP1, endpoints=[dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.1.2", node_name="lab-node2")],
    type="LoadBalancer", node_port=30080, external_ips=["192.168.200.20"], load_balancer_ips=["192.168.200.10"],
    external_traffic_policy="Local", health_check_node_port=30081, load_balancer_source_ranges=["192.168.100.0/24"])
# lab-node's addresses, as `ip -o -4 addr show` prints them (kube-ipvs0's are not node addresses).
LAB_NODE_ADDRESSES = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: cni0    inet 10.0.0.1/24 brd 10.0.0.255 scope global cni0\\       valid_lft forever preferred_lft forever
3: eth0    inet 192.168.100.11/24 brd 192.168.100.255 scope global eth0\\       valid_lft forever preferred_lft forever
7: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\\       valid_lft forever preferred_lft forever
"""


def test_a_load_balancer_with_the_local_policy_matches_golden():
    """Every set and chain of kube-proxy's IPVS mode once a Service is reachable from outside."""
    live = sync.Live(iptables_save="", local_addresses=LAB_NODE_ADDRESSES)
    rendered = sync.plan(ipvs_config(APP1_LOAD_BALANCER_LOCAL, node_name="lab-node", cluster_cidr="10.0.0.0/16"),
                         True, live).rules
    assert rendered == (GOLDEN / "ipvs-load-balancer-local.rules").read_text()


def test_node_addresses_are_every_local_address_but_loopback_and_kube_ipvs0():
    assert ipvs.parse_local_addresses(LAB_NODE_ADDRESSES) == {"127.0.0.1", "10.0.0.1", "192.168.100.11"}
    node = ipvs_config(APP1_LOAD_BALANCER_LOCAL, node_name="lab-node")
    assert ipvs.node_addresses(node, ipvs.parse_local_addresses(LAB_NODE_ADDRESSES)) == ("10.0.0.1", "192.168.100.11")
    given = ipvs_config(APP1_LOAD_BALANCER_LOCAL, node_name="lab-node", node_ips=["192.168.100.11"])
    assert ipvs.node_addresses(given, ["10.0.0.1", "192.168.100.11"]) == ("192.168.100.11",)


def test_back_to_cluster_ip_destroys_the_external_sets_after_the_rules():
    external = ipvs.render(ipvs_config(APP1_LOAD_BALANCER_LOCAL, node_name="lab-node"), ["192.168.100.11"])
    before, after = ipvs.plan_ipsets(ipvs.render(ipvs_config(APP1)).ipsets, external.ipsets)
    assert "destroy KUBE-NODE-PORT-TCP" in after and "destroy KUBE-IPVS-IPS" in after
    assert not any(line.startswith("destroy") for line in before)
