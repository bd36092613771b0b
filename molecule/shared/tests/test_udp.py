"""UDP through a Service (make lab UDP=1), in the scenario's mode: the dns Service reaches every
pod from every source, each pod seeing the address the TCP tests describe; and kube-proxy's
conntrack cleanup, shown by the udp_stale exercise (playbooks/exercise.yml) as a student runs
it: a stream from one source port sticks to its stopped pod while the cleanup is off, and
lands on a live pod once a sync deletes its entry, which is the only entry deleted.

The module's fixture puts the scenario's lab (without the dns Service) back afterwards, in a
finally.
"""

import importlib.util
import json
import os
import sys
import time

import pytest
from conftest import PROJECT, curl, play
from kube_proxy import conntrack
from test_lab import expected_source

PROBE = os.path.join(PROJECT, "roles", "lab_exercise", "files", "lab_udp_probe.py")
_SPEC = importlib.util.spec_from_file_location("lab_udp_probe", PROBE)
udp_probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(udp_probe)

MAX_TRIES = 60
# The udp_stale exercise's files (roles/lab_exercise/vars/main.yml) and its stream's source port.
STREAM_LOG = "udp_stale-stream.log"
STREAM_STATE = "udp_stale.json"
STREAM_PORT = 40053


@pytest.fixture(scope="module")
def dns(lab):
    play("lab.yml", mode=lab["mode"], udp_service=True)
    try:
        yield lab["udp_service"]
    finally:
        play("playbooks/exercise.yml", exercise="udp_stale", step="fix", must_succeed=False)
        play("lab.yml", mode=lab["mode"])


def target(service):
    return "%s:%s" % (service["cluster_ip"], service["port"])


def ask(host, netns, service, count):
    """COUNT questions from inside netns, each from a new source port; the parsed answers (None:
    lost or refused)."""
    output = host.check_output("ip netns exec %s %s %s ask --to %s --count %s --timeout 1",
                               netns, sys.executable, PROBE, target(service), str(count))
    answers = [udp_probe.ANSWER.match(line) for line in output.splitlines()]
    return [answer.groupdict() if answer else None for answer in answers]


def test_every_source_reaches_every_pod_over_udp(host, lab, dns, source):
    pods = {pod["name"] for pod in lab["pods"]}
    answers = []
    while len(answers) < MAX_TRIES and {a["pod"] for a in answers if a} != pods:
        answers += ask(host, source, dns, 10)
    assert {a["pod"] for a in answers if a} == pods, "from %s: %s" % (source, answers)
    assert None not in answers, "from %s, some datagrams got no answer: %s" % (source, answers)
    wrong = sorted({"%s saw %s, expected %s" % (a["pod"], a["ip"], expected_source(source, a, lab))
                    for a in answers if a["ip"] != expected_source(source, a, lab)})
    assert not wrong, "from %s: %s" % (source, "; ".join(wrong))


def conntrack_flows(host, netns):
    """The UDP flows of netns's conntrack table, read with the module's own parser: each flow
    (orig src, sport, dst, dport, reply src) and its seconds left."""
    entries = conntrack.parse_entries(host.check_output("ip netns exec %s conntrack -L -p udp 2>/dev/null", netns))
    return {(e.orig_src, e.orig_sport, e.orig_dst, e.orig_dport, e.reply_src): e.timeout for e in entries}


def stream_summary(lab, since):
    with open(os.path.join(lab["run_dir"], STREAM_LOG), encoding="utf-8") as handle:
        return udp_probe.summarize(udp_probe.parse_log(handle), since)


def short_stream(host, lab, netns, to, source_port):
    """Three seconds of datagrams from SOURCE_PORT: a flow answered both ways and still alive
    after 2 s, which conntrack then keeps for its stream timeout (nf_conntrack_udp_timeout_stream,
    120 s); younger, it keeps nf_conntrack_udp_timeout (30 s), less than a sync takes in the
    user-mode-linux node."""
    files = ["--pidfile", os.path.join(lab["run_dir"], "test-udp.pid"), "--logfile", os.path.join(lab["run_dir"], "test-udp.log")]
    host.check_output("ip netns exec %s %s %s stream start --to %s --source-port %s " + " ".join(files),
                      netns, sys.executable, PROBE, to, str(source_port))
    try:
        time.sleep(3)
    finally:
        host.run("%s %s stream stop " + " ".join(files), sys.executable, PROBE)
        host.run("rm -f %s", files[3])


def test_udp_stale_sticks_to_the_stopped_pod_until_the_cleanup_deletes_exactly_its_entry(host, lab, dns):
    node = lab["node_netns"]
    play("playbooks/exercise.yml", exercise="udp_stale", step="break")
    with open(os.path.join(lab["run_dir"], STREAM_STATE), encoding="utf-8") as handle:
        noted = json.load(handle)
    stopped = next(pod for pod in lab["pods"] if pod["name"] == noted["pod"])
    time.sleep(2)

    stuck = stream_summary(lab, noted["synced_at"])
    stream_flows = {flow for flow in conntrack_flows(host, node) if flow[1] == STREAM_PORT and flow[2] == dns["cluster_ip"]}
    if lab["mode"] == "ipvs":
        # Measured: IPVS expires the connection of a real server removed (expire_nodest_conn=1),
        # with its conntrack entry; the stream is scheduled again at once, to a live pod.
        assert stuck["sent"] >= 5 and stuck["answered"] and stopped["name"] not in stuck["answered"], stuck
        assert stuck["longest_unanswered"] <= 1, stuck
        assert stopped["ip"] not in {flow[4] for flow in stream_flows}, stream_flows
    else:
        assert stuck["sent"] >= 5 and stuck["answered"] == {}, stuck
        assert {flow[4] for flow in stream_flows} == {stopped["ip"]}, stream_flows

    # New flows never go to the stopped pod, UDP from new ports or TCP.
    new_udp = ask(host, lab["client_netns"], dns, 10)
    assert None not in new_udp and stopped["name"] not in {a["pod"] for a in new_udp}, new_udp
    app1 = lab["services"][0]
    new_tcp = [curl(host, lab["client_netns"], "http://%s:%s/" % (app1["cluster_ip"], app1["port"])) for _ in range(10)]
    assert None not in new_tcp and stopped["name"] not in {a["pod"] for a in new_tcp}, new_tcp

    # Flows the cleanup must leave alone: one to the Service that a live pod answers, and one
    # that is no Service's (the node to a live pod directly).
    live_pod = next(pod for pod in lab["pods"] if pod["name"] != stopped["name"])
    short_stream(host, lab, lab["client_netns"], target(dns), STREAM_PORT + 1)
    short_stream(host, lab, node, "%s:%s" % (live_pod["ip"], dns["target_port"]), STREAM_PORT + 2)
    before = conntrack_flows(host, node)
    unrelated = {flow for flow in before if flow[1] in (STREAM_PORT + 1, STREAM_PORT + 2)}
    assert len(unrelated) == 2 and stopped["ip"] not in {flow[4] for flow in unrelated}, before
    assert min(before[flow] for flow in unrelated) > 60, "not yet streams (expiring within a sync): %s" % before

    # A sync with the cleanup, as the fix's first step and lab.yml do.
    synced_at = time.time()
    play("lab.yml", "--tags", "lab_proxy", mode=lab["mode"], udp_service=True)
    after = conntrack_flows(host, node)
    time.sleep(1)
    cured = stream_summary(lab, synced_at)
    assert cured["last"] and udp_probe.ANSWER.match(cured["last"]), cured
    assert stopped["name"] not in cured["answered"], cured
    if lab["mode"] != "ipvs":  # in IPVS mode the stream's entry is a live pod's already: it stays
        assert not stream_flows & set(after), "the stream's stale entry survived: %s" % after
    assert unrelated <= set(after), "the cleanup deleted %s" % (unrelated - set(after))

    play("playbooks/exercise.yml", exercise="udp_stale", step="fix")
    assert not os.path.exists(os.path.join(lab["run_dir"], STREAM_STATE))
    assert curl(host, node, "http://%s:%s/" % (stopped["ip"], app1["target_port"])), "the fix did not start %s again" % stopped["name"]
