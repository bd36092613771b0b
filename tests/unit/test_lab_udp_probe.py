"""roles/lab_exercise/files/lab_udp_probe.py: the UDP client of the udp_stale exercise and the
UDP tests, its log and its summary (the sockets are exercised on loopback only)."""

import importlib.util
import socket
import threading

from ansible.module_utils.lab_pods import server

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("lab_udp_probe", REPO / "roles" / "lab_exercise" / "files" / "lab_udp_probe.py")
probe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probe)

LOG = """\
100.000 1 pod=pod2 client=192.168.100.11:40053
100.200 2 pod=pod2 client=192.168.100.11:40053
100.400 3 refused
100.600 4 lost
100.800 5 refused
101.000 6 pod=pod3 client=192.168.100.11:40053
101.2"""


def test_the_log_is_read_back_without_its_torn_last_line():
    entries = probe.parse_log(LOG.splitlines(keepends=True))
    assert len(entries) == 6
    assert entries[2] == (100.4, 3, "refused")


def test_the_summary_counts_answers_per_pod_losses_and_the_longest_silence():
    summary = probe.summarize(probe.parse_log(LOG.splitlines()), since=100.3)
    assert summary == dict(sent=4, answered={"pod3": 1}, lost=1, refused=2, longest_unanswered=3,
                           last="pod=pod3 client=192.168.100.11:40053")


def test_the_summary_can_end_before_the_log_does():
    summary = probe.summarize(probe.parse_log(LOG.splitlines()), since=100.0, until=100.5)
    assert summary["sent"] == 3 and summary["answered"] == {"pod2": 2} and summary["last"] == "refused"


def test_an_empty_log_summarises_to_nothing_sent():
    assert probe.summarize([]) == dict(sent=0, answered={}, lost=0, refused=0, longest_unanswered=0, last=None)


def test_ask_uses_a_new_source_port_per_datagram_and_tells_a_silent_service():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    threading.Thread(target=server.serve_datagrams, args=(listener, "pod1"), daemon=True).start()
    answers = probe.ask(listener.getsockname(), 3, 2.0)
    ports = {probe.ANSWER.match(answer)["port"] for answer in answers}
    assert len(answers) == 3 and len(ports) == 3
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    assert probe.ask(silent.getsockname(), 1, 0.2) == ["lost"]
    silent.close()
