#!/usr/bin/env python3
"""Talk to a UDP Service from inside a namespace: questions from new sockets, or one client's
steady stream from one source port. Standard library only. Each datagram sent is answered (or
not) by a pod with one datagram, ``pod=pod2 client=192.168.100.11:40053``.

    lab_udp_probe.py ask --to 10.96.0.53:53 --count 30 [--timeout 1]
        one datagram from a new socket (a new source port, a new conntrack entry) each, as
        separate DNS queries are; one line per datagram: the answer, or ``lost``/``refused``.
    lab_udp_probe.py stream start --to 10.96.0.53:53 --source-port 40053 --interval 0.2 \\
        --pidfile P --logfile L
        a daemon sending one datagram every INTERVAL seconds from one source port, as a DNS
        client that keeps its socket does; it logs ``TIME SEQ ANSWER`` per datagram, ANSWER
        the pod's line, ``lost`` (no answer within the interval) or ``refused`` (an ICMP port
        unreachable came back).
    lab_udp_probe.py stream stop --pidfile P        ends it, by the pid in P
    lab_udp_probe.py stream summary --logfile L [--since T] [--until U]
        what the stream got from time T to U (default: all): sent, answered per pod, lost,
        refused, the longest silence and the last answer.

Run it inside the namespace (``ip netns exec lab-client python3 lab_udp_probe.py ...``): the
sockets, and the daemon, keep the namespace they were made in.
"""

import argparse
import collections
import errno
import json
import os
import re
import signal
import socket
import sys
import time

ANSWER = re.compile(r"^pod=(?P<pod>\S+) client=(?P<ip>[0-9.]+):(?P<port>\d+)$")


def address(text):
    host, _colon, port = text.rpartition(":")
    return host, int(port)


def exchange(sock, timeout):
    """Send one datagram on a connected socket and wait for the answer: the pod's line, or
    ``refused`` (an ICMP port unreachable for an earlier or this datagram) or ``lost``."""
    try:
        sock.send(b"?")
        sock.settimeout(timeout)
        return sock.recv(2048).decode(errors="replace").strip()
    except socket.timeout:
        return "lost"
    except OSError as error:
        if error.errno == errno.ECONNREFUSED:
            return "refused"
        raise


def ask(target, count, timeout):
    """COUNT exchanges, each from a new socket."""
    answers = []
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            answers.append(exchange(sock, timeout))
    return answers


def stream_socket(target, source_port):
    """The stream's socket: bound to SOURCE_PORT, so that every datagram is one flow."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", source_port))
    sock.connect(target)
    return sock


def stream(sock, interval, log):
    """Send forever, one exchange per INTERVAL, each logged as it ends."""
    sequence = 0
    while True:
        started = time.monotonic()
        sequence += 1
        answer = exchange(sock, interval)
        log.write("%.3f %d %s\n" % (time.time(), sequence, answer))
        log.flush()
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def read_pid(pidfile):
    try:
        with open(pidfile, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def is_stream(pid, pidfile):
    """Whether pid is a live stream of this script owning pidfile (not a reused pid)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(arg.endswith(os.path.basename(__file__)) for arg in argv) and pidfile in argv


def start(args):
    """Start the stream as a daemon; return its pid once its socket is bound."""
    stop(args.pidfile)
    # A closed stdin, stdout or stderr would hand its number to the socket, which the daemon's
    # dup2 onto 0-2 would then close: point them at /dev/null first.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    try:  # errors (port in use) surface here, in the caller
        sock = stream_socket(address(args.to), args.source_port)
    except OSError as error:
        sys.exit("cannot send from UDP port %d to %s: %s" % (args.source_port, args.to, error.strerror))
    ready_r, ready_w = os.pipe()
    first = os.fork()
    if first == 0:
        os.close(ready_r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        with open(args.pidfile + ".tmp", "w", encoding="ascii") as handle:
            handle.write("%d\n" % os.getpid())
        os.replace(args.pidfile + ".tmp", args.pidfile)
        signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(0))
        with open(args.logfile, "a", encoding="utf-8") as log:
            os.write(ready_w, b"ok")
            os.close(ready_w)
            try:
                stream(sock, args.interval, log)
            finally:
                os._exit(1)
    os.close(ready_w)
    sock.close()
    os.waitpid(first, 0)
    ready = os.read(ready_r, 2)
    os.close(ready_r)
    if ready != b"ok":
        sys.exit("the stream did not start")
    return read_pid(args.pidfile)


def stop(pidfile, timeout=5.0):
    """End the stream behind pidfile by its pid; return the pid, or None when none ran."""
    pid = read_pid(pidfile)
    if pid is None or not is_stream(pid, pidfile):
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_stream(pid, pidfile) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_stream(pid, pidfile):
        os.kill(pid, signal.SIGKILL)
    os.unlink(pidfile)
    return pid


def parse_log(lines):
    """The stream's log as (time, sequence, answer) tuples; a torn last line is skipped."""
    entries = []
    for line in lines:
        words = line.rstrip("\n").split(" ", 2)
        if len(words) == 3 and words[1].isdigit():
            entries.append((float(words[0]), int(words[1]), words[2]))
    return entries


def summarize(entries, since=0.0, until=float("inf")):
    """What the stream got from SINCE to UNTIL: sent, answered per pod, lost, refused, the last
    answer, and the longest run of unanswered datagrams."""
    recent = [entry for entry in entries if since <= entry[0] < until]
    pods = collections.Counter()
    failures = collections.Counter()
    longest = run = 0
    for _time, _sequence, answer in recent:
        match = ANSWER.match(answer)
        if match:
            pods[match["pod"]] += 1
            run = 0
        else:
            failures[answer] += 1
            run += 1
            longest = max(longest, run)
    return dict(sent=len(recent), answered=dict(sorted(pods.items())), lost=failures["lost"],
                refused=failures["refused"], longest_unanswered=longest,
                last=recent[-1][2] if recent else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    asking = commands.add_parser("ask")
    asking.add_argument("--to", required=True, help="IP:PORT")
    asking.add_argument("--count", type=int, default=30)
    asking.add_argument("--timeout", type=float, default=1.0)
    streaming = commands.add_parser("stream")
    streaming.add_argument("action", choices=["start", "stop", "summary"])
    streaming.add_argument("--to", help="IP:PORT (start)")
    streaming.add_argument("--source-port", type=int, default=40053)
    streaming.add_argument("--interval", type=float, default=0.2)
    streaming.add_argument("--pidfile", help="absolute path (start, stop)")
    streaming.add_argument("--logfile", help="absolute path (start, summary)")
    streaming.add_argument("--since", type=float, default=0.0, help="unix time (summary)")
    streaming.add_argument("--until", type=float, default=float("inf"), help="unix time (summary)")
    args = parser.parse_args(argv)

    if args.command == "ask":
        for answer in ask(address(args.to), args.count, args.timeout):
            print(answer)
        return 0
    if args.action == "start":
        if not (args.to and args.pidfile and args.logfile):
            parser.error("stream start needs --to, --pidfile and --logfile")
        print("started pid %d" % start(args))
    elif args.action == "stop":
        if not args.pidfile:
            parser.error("stream stop needs --pidfile")
        pid = stop(args.pidfile)
        print("stopped pid %d" % pid if pid else "not running")
    else:
        if not args.logfile:
            parser.error("stream summary needs --logfile")
        try:
            with open(args.logfile, encoding="utf-8") as handle:
                entries = parse_log(handle)
        except FileNotFoundError:
            entries = []
        print(json.dumps(summarize(entries, args.since, args.until), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
