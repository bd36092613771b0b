"""The break-and-fix exercises (playbooks/exercise.yml): each break makes exactly the
measured symptom appear — the sources that must fail do fail, everything else still works,
the pods see the source addresses described — and the fix brings every source back to every
pod. Only the exercises measured in the scenario's mode run (MEASURED).

A Service picks a pod at random, so a failed request does not say which pod it went to.
What is measured per source: which pods answered (exactly the expected ones), whether any
request failed, and the address each answering pod saw. Sources that must see failures get
at least FAIL_TRIES requests; every source gets requests until each pod it must reach has
answered (and, if it must see failures, one has failed), at most MAX_TRIES (MAX_TRIES_FAILING).
"""

import json
import random
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

from conftest import ANSWER, MAX_TRIES, load_lab, play, sources
FAIL_TRIES = 6
# MAX_TRIES (conftest's, 60): with four pods, 30 missed a given one once in 5,600 picks, and a
# check of the cluster asks 7 sources for 4 pods each: once in 200 checks (seen).
# A source that must see failures may need more: with hairpin off a pod's requests to
# itself fail, and it picks itself less often than one in three (measured: 4 of 30 in
# both iptables and nftables mode), so 30 requests once held no failure at all.
MAX_TRIES_FAILING = 90
TIMEOUT = 2  # seconds per request (curl --max-time)
# Up to this many seconds between one source's requests, drawn at random: IPVS's rr scheduler
# is one counter for every source, and sources asking in lockstep can fall into a rhythm in
# which one of them never gets a given pod (seen: the node 30 times without pod1).
MAX_PAUSE = 0.05

EVERY_MODE = ["br_netfilter", "hairpin", "service_route", "ip_forward", "masquerade"]
# The exercise whose check step runs here, between break and fix, in every mode: a playbook run
# costs ~30 s in the user-mode-linux node, and check differs between exercises only in the
# texts and the command it shows (tests/unit/test_exercise_catalogue.py checks each exercise has
# them for each of its modes; the guide runs hairpin's and udp_stale's check too).
CHECKED = "masquerade"
# The exercises of each mode; every symptom asserted below was measured in that mode first.
MEASURED = {"iptables": EVERY_MODE, "nftables": EVERY_MODE,
            "ipvs": EVERY_MODE + ["vs_conntrack", "ipvs_vip"]}

# What one source must see: the pods that answer it (no other pod may), whether some of its
# requests fail, and the address every answering pod reports (None: the healthy lab's,
# see healthy_address).
Expect = namedtuple("Expect", "answer fail seen", defaults=(None,))


def pytest_generate_tests(metafunc):
    if "exercise" in metafunc.fixturenames:
        metafunc.parametrize("exercise", MEASURED[load_lab()["mode"]])


def bridge_address(node):
    return node["bridge_address"].split("/")[0]


def healthy_address(lab, source, pod):
    """What a pod sees in the healthy lab. From another pod, that pod's own address (pod
    traffic is routed, never masqueraded); from a pod reaching itself, its node's bridge
    (kube-proxy masquerades the hairpin). From the client, the first node's address on the
    way to the pod, for that node DNATs and masquerades it: its bridge's for its own pods, its
    node IP for the others'. From a node, its bridge address, the Service route's source and
    inside the cluster CIDR, so never masqueraded; in IPVS mode the node's source is the
    ClusterIP, local on kube-ipvs0, and masqueraded like the client's."""
    nodes = {node["netns"]: node for node in lab["nodes"]}
    target = next(each for each in lab["pods"] if each["name"] == pod)

    def masqueraded_by(node):
        return bridge_address(node) if node["netns"] == target["node"] else node["ip"]

    from_pod = next((each for each in lab["pods"] if each["netns"] == source), None)
    if from_pod:
        return from_pod["ip"] if from_pod is not target else bridge_address(nodes[target["node"]])
    if source == lab["client_netns"]:
        return masqueraded_by(lab["nodes"][0])
    return masqueraded_by(nodes[source]) if lab["mode"] == "ipvs" else bridge_address(nodes[source])


def healthy(lab):
    every_pod = {pod["name"] for pod in lab["pods"]}
    return {source: Expect(every_pod, False) for source in sources(lab)}


def pods_on(lab, node):
    return {pod["name"] for pod in lab["pods"] if pod["node"] == node["netns"]}


def expected(exercise, lab, client_ip):
    """The symptom, per source, as measured in this lab (see the exercise texts in
    roles/lab_exercise/vars/main.yml for why)."""
    node, client = lab["nodes"][0]["netns"], lab["client_netns"]
    every_pod = {pod["name"] for pod in lab["pods"]}
    expect = healthy(lab)
    if exercise == "br_netfilter":
        for pod in lab["pods"]:
            expect[pod["netns"]] = Expect({pod["name"]}, True)
    elif exercise == "hairpin":
        first = lab["pods"][0]
        expect[first["netns"]] = Expect(every_pod - {first["name"]}, True)
    elif exercise == "service_route" and lab["mode"] != "ipvs":  # in IPVS mode the ClusterIP is local
        expect[node] = Expect(set(), True)
    elif exercise == "ip_forward" and lab["mode"] == "ipvs":  # only what returns to a masquerade fails
        for pod in lab["pods"]:
            expect[pod["netns"]] = Expect(every_pod - {pod["name"]}, True)
        expect[client] = Expect(set(), True)
    elif exercise == "ip_forward":
        for source in [pod["netns"] for pod in lab["pods"]] + [client]:
            expect[source] = Expect(set(), True)
    elif exercise == "masquerade" and len(lab["nodes"]) > 1:
        on_first = pods_on(lab, lab["nodes"][0])
        for pod in lab["pods"]:
            if pod["name"] in on_first:
                expect[pod["netns"]] = Expect(every_pod - {pod["name"]}, True)
        expect[client] = Expect(on_first, True, client_ip)
        if lab["mode"] == "ipvs":  # the node's source, the ClusterIP, is local on every node's kube-ipvs0
            expect[node] = Expect(on_first, True, lab["services"][0]["cluster_ip"])
    elif exercise == "pod_route":  # the second node has no route back to the first node's pods
        first, second = lab["nodes"][:2]
        unreachable = {first["netns"]: pods_on(lab, second), second["netns"]: pods_on(lab, first)}
        for pod in lab["pods"]:
            if pod["node"] in unreachable:
                expect[pod["netns"]] = Expect(every_pod - unreachable[pod["node"]], True)
        for netns, pods in unreachable.items():
            if not (lab["mode"] == "ipvs" and netns == first["netns"]):  # IPVS masquerades the node's own
                expect[netns] = Expect(every_pod - pods, True)
    elif exercise in ("masquerade", "vs_conntrack"):  # vs_conntrack=0: IPVS's connections cannot be NATed
        for pod in lab["pods"]:
            expect[pod["netns"]] = Expect(every_pod - {pod["name"]}, True)
        expect[client] = Expect(every_pod, False, client_ip)
        if lab["mode"] == "ipvs":  # the node's source address is the ClusterIP, local on kube-ipvs0
            expect[node] = Expect(every_pod, False, lab["services"][0]["cluster_ip"])
    elif exercise == "ipvs_vip":  # IPVS schedules in LOCAL_IN (no longer) and LOCAL_OUT (the node)
        for source in [pod["netns"] for pod in lab["pods"]] + [client]:
            expect[source] = Expect(set(), True)
    return expect


def measure(host, url, source, expect):
    """Requests from source: ([(pod, address seen)], number failed)."""
    answers, failed = [], 0
    for tries in range(1, (MAX_TRIES_FAILING if expect.fail else MAX_TRIES) + 1):
        result = host.run("ip netns exec %s curl -s --max-time %s %s", source, str(TIMEOUT), url)
        match = ANSWER.match(result.stdout.strip()) if result.rc == 0 else None
        if match:
            answers.append((match["pod"], match["ip"]))
        else:
            failed += 1
        if {pod for pod, _ip in answers} >= expect.answer and (
                not expect.fail or (failed and tries >= FAIL_TRIES)):
            break
        time.sleep(random.uniform(0, MAX_PAUSE))
    return answers, failed


def mismatches(host, lab, expect):
    """How the lab differs from expect, one line per source; empty when it matches."""
    service = lab["services"][0]
    url = "http://%s:%s/" % (service["cluster_ip"], service["port"])
    problems = []
    # Every source at once: a source that must fail waits out FAIL_TRIES timeouts, and in
    # turn the sources would add those waits up. Not in IPVS mode: its rr scheduler is one
    # counter per node for every source, and sources whose failures all last the same 2 s fall
    # into rhythms (seen in the two-node masquerade exercise: lab-pod3 sent 52 of 90 requests to
    # itself and never got pod1). One source at a time, rr gives each source every pod in turn.
    with ThreadPoolExecutor(max_workers=1 if lab["mode"] == "ipvs" else len(expect)) as pool:
        measured = dict(zip(expect, pool.map(lambda item: measure(host, url, *item), expect.items())))
    for source, want in expect.items():
        answers, failed = measured[source]
        answered = {pod for pod, _ip in answers}
        wrong_address = sorted({"%s saw %s" % (pod, ip) for pod, ip in answers
                                if ip != (want.seen or healthy_address(lab, source, pod))})
        if answered != want.answer or bool(failed) != want.fail or wrong_address:
            problems.append("%s: answered by %s (expected %s), %d of %d failed (expected %s)%s" % (
                source, sorted(answered), sorted(want.answer), failed, failed + len(answers),
                "some" if want.fail else "none", "; " + ", ".join(wrong_address) if wrong_address else ""))
    return problems


def client_address(host, lab):
    addresses = json.loads(host.check_output("ip -n %s -j -4 addr show dev eth0", lab["client_netns"]))
    return addresses[0]["addr_info"][0]["local"]


def breaks_and_fixes(host, lab, exercise):
    """Break EXERCISE in LAB (the running lab: nodes, pods), check that the measured symptom is
    exactly there (and, for CHECKED, that check reports it), fix it, check that every source
    reaches every pod."""
    expect = expected(exercise, lab, client_address(host, lab))
    try:
        play("playbooks/exercise.yml", exercise=exercise, step="break")
        if exercise == CHECKED:
            report = play("playbooks/exercise.yml", "-e", "lab_exercise_tries=1", exercise=exercise, step="check").stdout
            assert "Exercise %s (mode %s)" % (exercise, lab["mode"]) in report, report
        problems = mismatches(host, lab, expect)
        assert not problems, "after break %s:\n" % exercise + "\n".join(problems)
    finally:
        play("playbooks/exercise.yml", exercise=exercise, step="fix")
    problems = mismatches(host, lab, healthy(lab))
    assert not problems, "after fix %s:\n" % exercise + "\n".join(problems)


def test_exercise_breaks_and_fixes(host, lab, exercise):
    breaks_and_fixes(host, lab, exercise)
