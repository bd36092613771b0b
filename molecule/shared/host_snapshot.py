#!/usr/bin/env python3
"""Snapshot the host's ROOT network namespace, to prove the lab never touches it.

    host_snapshot.py save  FILE [--ignore-netns NAME ...]
    host_snapshot.py check FILE [--ignore-netns NAME ...]   # exit 1 and a diff on any change

Only reads: firewall rules (iptables-save, iptables-legacy-save, ip6tables-save,
nft list ruleset), links, addresses, routes, policy rules, the named network namespaces
and the forwarding/bridge sysctls. Volatile bits are removed first: packet/byte counters,
"# Generated/Completed" comment lines, address lifetimes, route expiry timers, netns ids.

The lab's own namespaces (--ignore-netns, and names matching the regular expression in
$LAB_SNAPSHOT_IGNORE_NETNS, for a machine shared with other work) are left out of the
namespace list: they exist while the lab is up and are checked by the teardown test.
"""

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.vs.conntrack",
)

# section name -> argv; a tool that is not installed is recorded as such.
COMMANDS = {
    "iptables-save": ["iptables-save"],
    "iptables-legacy-save": ["iptables-legacy-save"],
    "ip6tables-save": ["ip6tables-save"],
    "nft list ruleset": ["nft", "list", "ruleset"],
    "ip -d link": ["ip", "-d", "link", "show"],
    "ip addr": ["ip", "addr", "show"],
    "ip -4 route": ["ip", "-4", "route", "show", "table", "all"],
    "ip -6 route": ["ip", "-6", "route", "show", "table", "all"],
    "ip rule": ["ip", "rule", "show"],
    "ip -6 rule": ["ip", "-6", "rule", "show"],
    "ip netns list": ["ip", "netns", "list"],
}

VOLATILE = [
    (re.compile(r"^# (Generated|Completed) .*$", re.M), ""),  # iptables-save banners
    (re.compile(r"\[\d+:\d+\]"), "[0:0]"),  # iptables-save chain counters
    (re.compile(r"^(-[A-Z] .*) -c \d+ \d+", re.M), r"\1"),  # iptables-save -c rule counters
    (re.compile(r"counter packets \d+ bytes \d+"), "counter"),  # nft counters
    (re.compile(r" expires \S+"), ""),  # nft set elements, IPv6 routes
    (re.compile(r"valid_lft \S+ preferred_lft \S+"), "lifetimes"),  # address lifetimes
    (re.compile(r" \(id: \d+\)"), ""),  # ip netns list ids
    (re.compile(r"(_timer)\s+[0-9.]+"), r"\1"),  # ip -d link: a bridge's running timers
    (re.compile(r"\n{2,}"), "\n"),
]


def run(argv):
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.stdout + (
        f"(exit {proc.returncode}: {proc.stderr.strip()})" if proc.returncode else ""
    )


def normalise(text):
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text.strip() + "\n"


def sysctls():
    lines = []
    for name in SYSCTLS:
        path = "/proc/sys/" + name.replace(".", "/")
        try:
            with open(path, encoding="ascii") as handle:
                value = " ".join(handle.read().split())
        except OSError:
            value = "(absent)"
        lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


def snapshot(ignore_netns=()):
    """The root namespace as {section: normalised text}; reads only."""
    ignore = os.environ.get("LAB_SNAPSHOT_IGNORE_NETNS", "")
    result = {name: normalise(run(argv)) for name, argv in COMMANDS.items()}
    names = [line.split()[0] for line in result["ip netns list"].splitlines() if line.strip()]
    result["ip netns list"] = "".join(
        name + "\n"
        for name in names
        if name not in ignore_netns and not (ignore and re.search(ignore, name))
    )
    result["sysctl"] = sysctls()
    return result


# What the lab holds inside each of its namespaces: the same readers, plus kube-proxy's
# ipsets and IPVS table (only where the kernel has IPVS: ipvsadm would load it otherwise).
NAMESPACE_COMMANDS = {name: argv for name, argv in COMMANDS.items() if name != "ip netns list"}
NAMESPACE_COMMANDS["ipset save"] = ["ipset", "save"]


def namespace_snapshot(names):
    """Each named namespace as {"NAME: section": normalised text}; reads only."""
    commands = dict(NAMESPACE_COMMANDS)
    if os.path.exists("/sys/module/ip_vs"):
        commands["ipvsadm-save"] = ["ipvsadm-save", "-n"]
    return {
        f"{name}: {section}": normalise(run(["ip", "netns", "exec", name] + argv))
        for name in names for section, argv in commands.items()
    }


def differences(before, after):
    """A unified diff per changed section; empty when the namespace is unchanged."""
    out = []
    for section in sorted(set(before) | set(after)):
        old, new = before.get(section, ""), after.get(section, "")
        if old != new:
            out.extend(
                difflib.unified_diff(
                    old.splitlines(keepends=True),
                    new.splitlines(keepends=True),
                    f"{section} (before)",
                    f"{section} (now)",
                )
            )
    return "".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=["save", "check"])
    parser.add_argument("file")
    parser.add_argument("--ignore-netns", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    now = snapshot(args.ignore_netns)
    if args.action == "save":
        with open(args.file, "w", encoding="utf-8") as handle:
            json.dump(now, handle, indent=1, sort_keys=True)
        print(f"saved a snapshot of the root network namespace to {args.file}")
        return 0
    with open(args.file, encoding="utf-8") as handle:
        diff = differences(json.load(handle), now)
    if diff:
        print("the host's root network namespace changed:\n" + diff)
        return 1
    print("the host's root network namespace is unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
