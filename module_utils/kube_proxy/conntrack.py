"""kube-proxy's conntrack cleanup, after every sync (pkg/proxy/conntrack, CleanStaleEntries).

Conntrack remembers each flow's NAT: the first packet picks an endpoint, every later packet of
the flow (same addresses and ports) is rewritten to the same one without looking at the rules
again. For TCP the flow ends with the connection. UDP has no end: a client that keeps sending
from one port keeps its entry alive, and keeps reaching a pod that is gone, however the rules
change. So after a sync kube-proxy lists the node's UDP entries and deletes each one whose
original destination is a UDP service port and whose reply source (where it was DNATed to) is
not one of that service port's serving endpoints:

- destination a ClusterIP, load balancer IP or external IP and the service port:
  ``conntrack -D -p udp --orig-dst SERVICE_IP --orig-port-dst PORT --reply-src ADDRESS``;
- destination port a UDP NodePort (on any address):
  ``conntrack -D -p udp --orig-port-dst NODE_PORT --reply-src ADDRESS``.

The same rule covers a Service that had no endpoints: a datagram sent then was not DNATed, so
its entry's reply source is the Service IP itself, no endpoint; once the Service has endpoints
again, the entry goes. A service port with no endpoints at all is left alone (nothing could
take its flows), as is every protocol but UDP and a Service no longer declared. Traffic
policies, topology and terminating state do not count: a serving endpoint keeps its flows.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

from .model import Service

LIST_ARGV = ("conntrack", "-L", "-p", "udp")

# `conntrack -L` prints one flow per line: the protocol's name and number, the seconds left,
# the original tuple (src= dst= sport= dport=), flags like [UNREPLIED], then the reply tuple.
_TUPLE_KEYS = ("src", "dst", "sport", "dport")
_KEY_VALUE = re.compile(r"(\w+)=(\S+)")
# conntrack reports on stderr how many flows a -D deleted, and exits 1 when none.
NOTHING_DELETED = re.compile(r"\b0 flow entries have been deleted")


@dataclass(frozen=True)
class Entry:
    """One conntrack flow: the original direction (client to Service) and the reply
    direction (the endpoint it was DNATed to, back to the client)."""

    protocol: str
    timeout: int  # seconds left
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    text: str


@dataclass(frozen=True)
class Filter:
    """What one ``conntrack -D`` deletes: UDP flows to ``orig_dst`` port ``orig_port_dst``
    (for a NodePort, to that port on any address) whose reply comes from ``reply_src``."""

    reply_src: str
    orig_port_dst: int
    orig_dst: Optional[str] = None

    @property
    def argv(self) -> Tuple[str, ...]:
        destination = ("--orig-dst", self.orig_dst) if self.orig_dst is not None else ()
        return (("conntrack", "-D", "-p", "udp") + destination
                + ("--orig-port-dst", str(self.orig_port_dst), "--reply-src", self.reply_src))


def parse_entries(text: str) -> List[Entry]:
    """The flows of ``conntrack -L`` (default or extended output); other lines are skipped."""
    entries = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["ipv4"]:  # -o extended: the layer 3 protocol first
            words = words[2:]
        if len(words) < 3 or not words[1].isdigit():
            continue
        pairs = _KEY_VALUE.findall(" ".join(words[3:]))
        tuples = [dict(pairs[start:start + 4]) for start in (0, 4)]
        if len(pairs) < 8 or any(tuple(tup) != _TUPLE_KEYS for tup in tuples):
            continue
        original, reply = tuples
        entries.append(Entry(
            protocol=words[0], timeout=int(words[2]) if words[2].isdigit() else 0,
            orig_src=original["src"], orig_dst=original["dst"],
            orig_sport=int(original["sport"]), orig_dport=int(original["dport"]),
            reply_src=reply["src"], reply_dst=reply["dst"],
            reply_sport=int(reply["sport"]), reply_dport=int(reply["dport"]),
            text=line.strip(),
        ))
    return entries


def serving_endpoints(services: Sequence[Service]) -> Tuple[Dict[Tuple[str, int], Set[str]], Dict[int, Set[str]]]:
    """For every UDP service port with endpoints: its Service IPs (ClusterIP, load balancer and
    external IPs) with its port, and its NodePort, each mapped to the addresses of its serving
    endpoints."""
    by_portal: Dict[Tuple[str, int], Set[str]] = {}
    by_node_port: Dict[int, Set[str]] = {}
    for service in services:
        if service.protocol != "UDP" or not service.declared_endpoints:
            continue
        serving = {endpoint.ip for endpoint in service.declared_endpoints if endpoint.serving}
        for address in (service.cluster_ip,) + service.load_balancer_ips + service.external_ips:
            by_portal[(address, service.port)] = serving
        if service.node_port:
            by_node_port[service.node_port] = serving
    return by_portal, by_node_port


def find_stale(services: Sequence[Service], entries: Sequence[Entry]) -> Tuple[List[Entry], List[Filter]]:
    """The ENTRIES kube-proxy's cleanup deletes, in listing order, and the ``conntrack -D``
    filters that delete them, each once, in the order of the first entry that needs it."""
    by_portal, by_node_port = serving_endpoints(services)
    stale: List[Entry] = []
    filters: Dict[Filter, None] = {}  # ordered, each once
    for entry in entries:
        if entry.protocol != "udp":
            continue
        wanted = []
        serving = by_portal.get((entry.orig_dst, entry.orig_dport))
        if serving is not None and entry.reply_src not in serving:
            wanted.append(Filter(reply_src=entry.reply_src, orig_port_dst=entry.orig_dport, orig_dst=entry.orig_dst))
        serving = by_node_port.get(entry.orig_dport)
        if serving is not None and entry.reply_src not in serving:
            wanted.append(Filter(reply_src=entry.reply_src, orig_port_dst=entry.orig_dport))
        if wanted:
            stale.append(entry)
            filters.update(dict.fromkeys(wanted))
    return stale, list(filters)


def needs_cleanup(services: Sequence[Service]) -> bool:
    """Whether kube-proxy's cleanup has anything to look for: a UDP service port with endpoints."""
    return any(service.protocol == "UDP" and service.declared_endpoints for service in services)
