#!/usr/bin/env python3
"""Send a few requests to a Service from several network namespaces and print, per source,
which pods answered, the client address each pod saw, and how the other requests failed.

    lab_exercise_probe.py --url http://10.96.0.10:80/ --tries 6 --timeout 2 \\
        node=lab-node pod1=lab-pod1 client=lab-client

Each source's requests run one after the other (so the table shows what one client
would see), the sources side by side (so a broken source costs its timeouts only once).
Standard library only; exits 0 whatever the answers were.
"""

import argparse
import collections
import re
import subprocess
import sys
import threading

ANSWER = re.compile(r"^pod=(?P<pod>\S+) client=(?P<ip>[0-9.]+):\d+$")
CURL_ERROR = re.compile(r"^curl: \(\d+\) ")
# curl -v names the socket error ("Network is unreachable") that its own message hides.
CONNECT_ERROR = re.compile(r"^\* (?:Immediate connect fail for \S+|connect to \S+ port \d+ failed): (?P<reason>.+)$", re.M)


def request(netns, url, timeout):
    """One GET from inside netns: ('ok', pod, seen client ip) or ('failed', reason)."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-sSv", "--max-time", str(timeout), url],
        capture_output=True, text=True, check=False)
    match = ANSWER.match(result.stdout.strip()) if result.returncode == 0 else None
    if match:
        return ("ok", match["pod"], match["ip"])
    connect_error = CONNECT_ERROR.search(result.stderr)
    if connect_error:
        return ("failed", connect_error["reason"])
    reason = (result.stderr.strip().splitlines() or ["exit status %d" % result.returncode])[-1]
    # "after 2001 milliseconds" differs on every try; the kind of failure is what matters.
    reason = re.sub(r" after \d+ (ms|milliseconds)", "", CURL_ERROR.sub("", reason))
    return ("failed", reason)


def probe(netns, url, tries, timeout, results):
    results[netns] = [request(netns, url, timeout) for _ in range(tries)]


def describe(outcomes):
    answered = collections.Counter((o[1], o[2]) for o in outcomes if o[0] == "ok")
    failed = collections.Counter(o[1] for o in outcomes if o[0] == "failed")
    parts = ["%s x%d (saw %s)" % (pod, count, ip) for (pod, ip), count in sorted(answered.items())]
    parts += ["%d failed: %s" % (count, reason) for reason, count in sorted(failed.items())]
    return "%d/%d answered: %s" % (sum(answered.values()), len(outcomes), "; ".join(parts))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tries", type=int, default=6)
    parser.add_argument("--timeout", type=int, default=2, help="seconds per request (curl --max-time)")
    parser.add_argument("sources", nargs="+", metavar="LABEL=NETNS")
    args = parser.parse_args(argv)
    sources = [source.split("=", 1) for source in args.sources]
    results = {}
    threads = [threading.Thread(target=probe, args=(netns, args.url, args.tries, args.timeout, results))
               for _label, netns in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    width = max(len("%s (%s)" % (label, netns)) for label, netns in sources)
    for label, netns in sources:
        print("%-*s  %s" % (width, "%s (%s)" % (label, netns), describe(results[netns])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
