#!/usr/bin/env python3
"""The kube-proxy-lab pod server: a tiny HTTP daemon, Python standard library only.

Every GET is answered with one line naming the pod and the client address the pod saw,
for example ``pod=pod1 client=10.0.0.1:54321``, so a student sees both which backend the
Service picked and whether the source was masqueraded. With ``--udp-port N`` it answers every
datagram to UDP port N the same way, with one datagram (the lab's UDP Service, like kube-dns).

With ``--health-file F`` it is instead kube-proxy's health check server for one
healthCheckNodePort (pkg/proxy/healthcheck/service_health.go), run in a node's namespace:
every GET is answered as kube-proxy answers it, 200 when the Service has ready endpoints on
the node and 503 when it has none, with kube-proxy's headers and JSON body (health_answer).
The Service and its count are the entry for ``--port`` in F, a JSON file read on every
request (``{"30081": {"namespace": "default", "name": "app1", "local_endpoints": 2}}``, the
kube_proxy_health module writes it), so a new count needs no restart; no entry is 0, 503.

    lab_pod_server.py start   --name pod1 --port 8080 [--udp-port 8053] --pidfile P --logfile L
    lab_pod_server.py start   --name lab-node --port 30081 --health-file F --pidfile P --logfile L
    lab_pod_server.py restart --name pod1 --port 8080 --pidfile P --logfile L
    lab_pod_server.py status  --pidfile P
    lab_pod_server.py stop    --pidfile P

``start`` is idempotent: when the pidfile names a live process whose command line
(/proc/<pid>/cmdline) is this server with this pidfile and the same name, port, log and
health file and UDP port, it prints ``running pid N`` and changes nothing; a server with other settings is
replaced and a stale pidfile is removed. It prints ``started pid N`` only once the daemon listens and its
pidfile is written; ``stop`` sends SIGTERM to the pid (SIGKILL after 5 s) and waits. Run it inside the pod's namespace (``ip netns exec lab-pod1 python3 …``): the
daemon keeps the namespace it was started in.

The lab_pods role installs it with the lab_pod_servers module, which imports it from here
(its helpers tell a running server's settings) and writes it to RUN_DIR/lab_pod_server.py.
The kube_proxy_health module (the lab_proxy role) installs its own copy, RUN_DIR/health/lab_pod_server.py.
"""

import argparse
import http.server
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time

# The name it runs under (lab_pods installs it as RUN_DIR/lab_pod_server.py): a process is
# told to be this server by it, also by the lab_pod_servers module, which imports this file.
SCRIPT = "lab_pod_server.py"


def read_pid(pidfile):
    """Return the pid stored in pidfile, or None when it is missing or unreadable."""
    try:
        with open(pidfile, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def server_argv(pid, pidfile):
    """The arguments of pid when it is a live (not zombie) instance of this server owning
    pidfile, else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [arg.decode(errors="replace") for arg in handle.read().split(b"\0")[:-1]]
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):
        return None
    for index, arg in enumerate(argv):
        if os.path.basename(arg) == SCRIPT:
            args = argv[index + 1 :]
            return args if pidfile in args else None
    return None


def is_server(pid, pidfile):
    """True when pid is a live instance of this server owning pidfile."""
    return server_argv(pid, pidfile) is not None


def running_pid(pidfile):
    """The pid of the live server behind pidfile, or None."""
    pid = read_pid(pidfile)
    return pid if pid is not None and is_server(pid, pidfile) else None


def health_answer(namespace, name, local_endpoints, healthy=True):
    """kube-proxy's answer to a health check of Service namespace/name on a node with
    local_endpoints ready endpoints of it: (status, headers, body). 200 when there is one or
    more and kube-proxy is healthy (the lab's always is: it runs no healthz), else 503. The
    body is kube-proxy's dedented, tab-indented JSON, without a final newline."""
    body = "\n".join([
        "{",
        '\t"service": {',
        '\t\t"namespace": %s,' % json.dumps(namespace),
        '\t\t"name": %s' % json.dumps(name),
        "\t},",
        '\t"localEndpoints": %d,' % local_endpoints,
        '\t"serviceProxyHealthy": %s' % ("true" if healthy else "false"),
        "}",
    ])
    headers = [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff"),
               ("X-Load-Balancing-Endpoint-Weight", str(local_endpoints))]
    return (200 if local_endpoints != 0 and healthy else 503), headers, body.encode()


def pod_answer(pod_name, client_address):
    """The one line a pod answers with, over HTTP and UDP alike."""
    host, port = client_address[:2]
    return f"pod={pod_name} client={host}:{port}\n".encode()


def log(client_host, message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    sys.stderr.write(f"{stamp} {client_host} {message}\n")
    sys.stderr.flush()


def read_health(health_file, port):
    """(namespace, name, local_endpoints) of port's entry in the health file; a missing or
    unreadable file or entry is ("", "", 0): no endpoint here."""
    try:
        with open(health_file, encoding="utf-8") as handle:
            entry = json.load(handle)[str(port)]
        return str(entry["namespace"]), str(entry["name"]), int(entry["local_endpoints"])
    except (OSError, ValueError, TypeError, KeyError):
        return "", "", 0


class Handler(http.server.BaseHTTPRequestHandler):
    """Answer every GET with ``pod=<name> client=<ip>:<port>``, or as kube-proxy's health
    check server with --health-file."""

    server_version = "kube-proxy-lab"
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 - the name http.server dispatches to
        if self.server.health_file:
            status, headers, body = health_answer(*read_health(self.server.health_file, self.server.server_port))
            self.send_response(status)
            for header, value in headers:
                self.send_header(header, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = pod_answer(self.server.pod_name, self.client_address)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        log(self.address_string(), format % args)


def serve_datagrams(udp, pod_name):
    """Answer every datagram with one: the pod's line, to the address it came from."""
    while True:
        _data, client_address = udp.recvfrom(2048)
        udp.sendto(pod_answer(pod_name, client_address), client_address)
        log(client_address[0], f"UDP from port {client_address[1]}")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer.server_bind also looks up the host's FQDN: a DNS query that can hang
        # in a namespace with no way out. The name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def serve(server, udp, pidfile, ready_fd):
    """Run in the daemon: write the pidfile, report ready, serve until SIGTERM."""
    with open(f"{pidfile}.tmp", "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(f"{pidfile}.tmp", pidfile)

    def on_signal(_signum, _frame):
        if read_pid(pidfile) == os.getpid():
            os.unlink(pidfile)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if udp is not None:
        threading.Thread(target=serve_datagrams, args=(udp, server.pod_name), daemon=True).start()
    os.write(ready_fd, b"ok")
    os.close(ready_fd)
    server.serve_forever()


def open_standard_fds():
    """Point any closed stdin, stdout or stderr at /dev/null.

    A caller that closed one (a CI runner's stdin, `cmd 0<&-`) would otherwise hand its
    number to the listening socket or the ready pipe, and the daemon's dup2 onto 0-2 would
    then close that socket: a server that started but never answers."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this fd


def daemonize(args):
    """Bind, then double-fork; return the daemon's pid once it is listening."""
    open_standard_fds()
    server = Server(("0.0.0.0", args.port), Handler, bind_and_activate=False)
    server.pod_name = args.name
    server.health_file = args.health_file
    try:  # errors (port in use, no such address) surface here, in the caller
        server.server_bind()
        server.server_activate()
    except OSError as error:
        sys.exit(f"{args.name}: cannot listen on port {args.port}: {error.strerror}")
    udp = None
    if args.udp_port:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("0.0.0.0", args.udp_port))
        except OSError as error:
            sys.exit(f"{args.name}: cannot listen on UDP port {args.udp_port}: {error.strerror}")
    ready_r, ready_w = os.pipe()
    first = os.fork()
    if first == 0:
        os.close(ready_r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.chdir("/")
        os.umask(0o022)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(args.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        try:
            serve(server, udp, args.pidfile, ready_w)
        finally:
            os._exit(1)
    os.close(ready_w)
    server.socket.close()
    if udp is not None:
        udp.close()
    os.waitpid(first, 0)
    ready = os.read(ready_r, 2)
    os.close(ready_r)
    pid = read_pid(args.pidfile)
    if ready != b"ok" or pid is None:
        sys.exit(f"the server did not come up; see {args.logfile}")
    return pid


def stop(pidfile, timeout=5.0):
    """Stop the server behind pidfile by its pid; return the pid stopped, or None."""
    pid = running_pid(pidfile)
    if pid is None:
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_server(pid, pidfile):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    return pid


def parser():
    result = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    result.add_argument("action", choices=["start", "restart", "status", "stop"])
    result.add_argument("--pidfile", required=True, help="absolute path; identifies the daemon")
    result.add_argument("--name", help="pod name put in every answer (start, restart)")
    result.add_argument("--port", type=int, default=8080)
    result.add_argument("--udp-port", type=int, help="also answer datagrams to this UDP port (start, restart)")
    result.add_argument("--logfile", default=os.devnull)
    result.add_argument("--health-file",
                        help="absolute path: answer as kube-proxy's health check server (start, restart)")
    return result


def settings(args):
    return (args.name, args.port, args.logfile, args.health_file, args.udp_port)


def running_with(pidfile, name, port, logfile, health_file=None, udp_port=None):
    """The pid of the live server behind pidfile when it runs with these settings, else None."""
    pid = running_pid(pidfile)
    if pid is None:
        return None
    running, _ = parser().parse_known_args(server_argv(pid, pidfile) or [])
    return pid if settings(running) == (name, port, logfile, health_file, udp_port) else None


def main(argv=None):
    cli = parser()
    args = cli.parse_args(argv)
    if not os.path.isabs(args.pidfile):
        cli.error("--pidfile must be an absolute path (it identifies the daemon)")

    if args.action == "status":
        pid = running_pid(args.pidfile)
        print(f"running pid {pid}" if pid else "not running")
        return 0 if pid else 3
    if args.action == "stop":
        pid = stop(args.pidfile)
        print(f"stopped pid {pid}" if pid else "not running")
        return 0
    if not args.name:
        cli.error(f"{args.action} needs --name")
    if args.health_file and not os.path.isabs(args.health_file):
        cli.error("--health-file must be an absolute path (the daemon runs in /)")
    note = ""
    pid = running_pid(args.pidfile)
    if pid and args.action == "start":
        if running_with(args.pidfile, *settings(args)) == pid:
            print(f"running pid {pid}")
            return 0
        note = f" (replaced pid {pid}, which ran with other settings)"
    if pid:
        stop(args.pidfile)
        note = note or f" (restarted; was pid {pid})"
    elif os.path.exists(args.pidfile):
        os.unlink(args.pidfile)  # stale: its process is gone or is not this server
    print(f"started pid {daemonize(args)}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
