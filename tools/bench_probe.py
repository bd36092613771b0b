"""New-connection latency probe; tools/bench runs it inside the bench client's namespace.

    ip netns exec kpl-bench-client python3 tools/bench_probe.py --count 200 IP[:PORT]...

For each connection: TCP connect, send one HTTP GET, wait for the first byte of the answer;
the time from before connect() to that byte is one sample. Every connection is new (a new
source port), so each one's first packet goes through the NAT rules the bench measures.
The targets are probed in turn (a, b, a, b, ...) so that drift on a busy machine hits both
alike. Prints one JSON object: {"IP:PORT": {"seconds": [...], "failed": N}, ...}.
Python standard library only.
"""

import argparse
import json
import socket
import time

REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"


def one(address, timeout):
    start = time.perf_counter()
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(REQUEST)
        if not sock.recv(1):
            raise OSError("closed before answering")
        elapsed = time.perf_counter() - start
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5, help="connections per target not counted")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()
    addresses = []
    for target in args.targets:
        host, _sep, port = target.partition(":")
        addresses.append((target, (host, int(port or 80))))
    results = {target: {"seconds": [], "failed": 0} for target, _address in addresses}
    for index in range(args.warmup + args.count):
        for target, address in addresses:
            try:
                elapsed = one(address, args.timeout)
            except OSError:
                if index >= args.warmup:
                    results[target]["failed"] += 1
                continue
            if index >= args.warmup:
                results[target]["seconds"].append(elapsed)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
