#!/usr/bin/env python3
"""The kube-proxy-lab pod server: a tiny HTTP daemon, Python standard library only.

Every GET is answered with one line naming the pod and the client address the pod saw,
for example ``pod=pod1 client=10.0.0.1:54321``, so a student sees both which backend the
Service picked and whether the source was masqueraded.

    lab_pod_server.py start   --name pod1 --port 8080 --pidfile P --logfile L
    lab_pod_server.py restart --name pod1 --port 8080 --pidfile P --logfile L
    lab_pod_server.py status  --pidfile P
    lab_pod_server.py stop    --pidfile P

``start`` is idempotent: when the pidfile names a live process whose command line
(/proc/<pid>/cmdline) is this server with this pidfile and the same name, port and log, it
prints ``running pid N`` and changes nothing; a server with other settings is replaced and a
stale pidfile is removed. It prints ``started pid N`` only once the daemon listens and its
pidfile is written; ``stop`` sends SIGTERM to the pid (SIGKILL after 5 s) and waits. Run it inside the pod's namespace (``ip netns exec lab-pod1 python3 …``): the
daemon keeps the namespace it was started in.

The lab_pods role installs it with the lab_pod_servers module, which imports it from here
(its helpers tell a running server's settings) and writes it to RUN_DIR/lab_pod_server.py.
"""

import argparse
import http.server
import os
import signal
import socketserver
import sys
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


class Handler(http.server.BaseHTTPRequestHandler):
    """Answer every GET with ``pod=<name> client=<ip>:<port>``."""

    server_version = "kube-proxy-lab"
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 - the name http.server dispatches to
        host, port = self.client_address[:2]
        body = f"pod={self.server.pod_name} client={host}:{port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stderr.write(f"{stamp} {self.address_string()} {format % args}\n")
        sys.stderr.flush()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer.server_bind also looks up the host's FQDN: a DNS query that can hang
        # in a namespace with no way out. The name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def serve(server, pidfile, ready_fd):
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
    try:  # errors (port in use, no such address) surface here, in the caller
        server.server_bind()
        server.server_activate()
    except OSError as error:
        sys.exit(f"{args.name}: cannot listen on port {args.port}: {error.strerror}")
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
            serve(server, args.pidfile, ready_w)
        finally:
            os._exit(1)
    os.close(ready_w)
    server.socket.close()
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
    result.add_argument("--logfile", default=os.devnull)
    return result


def settings(args):
    return (args.name, args.port, args.logfile)


def running_with(pidfile, name, port, logfile):
    """The pid of the live server behind pidfile when it runs with these settings, else None."""
    pid = running_pid(pidfile)
    if pid is None:
        return None
    running, _ = parser().parse_known_args(server_argv(pid, pidfile) or [])
    return pid if settings(running) == (name, port, logfile) else None


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
