"""kube-proxy's service health check server, the part that runs it: one daemon per health check
node port in the node's network namespace, started, kept, restarted and ended by pidfile, and
the node's health file they read (the counts come from healthcheck.py). The kube_proxy module
runs this after each sync of a node (as kube-proxy serves its health checks itself), the
kube_proxy_health module on its own (and to end every node's servers at teardown).

Files, in RUN_DIR/health/: the server script (lab_pods/server.py), per node NETNS.json (the
counts), per port NETNS.PORT.pid and NETNS.PORT.log.
"""

import inspect
import os
import shutil
import sys

from ansible.module_utils import lab_processes as processes
from ansible.module_utils.kube_proxy import healthcheck
from ansible.module_utils.lab_pods import server

NETNS_DIR = "/run/netns"
# Inside run_dir: not NAME.pid there, which lab_pod_servers would take for a pod's.
HEALTH_DIR = "health"
# How long a server gets between SIGTERM and SIGKILL (as the server's own stop).
END_GRACE_S = 5.0


def health_dir(run_dir):
    return os.path.join(run_dir, HEALTH_DIR)


def node_file(run_dir, netns, suffix, port=None):
    """A node's health file (json), or a port's pidfile (pid) or log (log)."""
    name = netns if port is None else "%s.%d" % (netns, port)
    return os.path.join(health_dir(run_dir), "%s.%s" % (name, suffix))


def known_files(run_dir, netns=None):
    """{netns: {"ports": {port, ...}, "files": [path, ...]}} for the files in the health
    directory (of netns only, when given), the script left out."""
    try:
        entries = sorted(os.listdir(health_dir(run_dir)))
    except OSError:
        return {}
    nodes = {}
    for entry in entries:
        stem, _dot, suffix = entry.rpartition(".")
        port = None
        if suffix in ("pid", "log"):
            stem, _dot, number = stem.rpartition(".")
            if not number.isdigit():
                continue
            port = int(number)
        elif suffix != "json":
            continue
        if not stem or (netns is not None and stem != netns):
            continue
        node = nodes.setdefault(stem, dict(ports=set(), files=[]))
        node["files"].append(os.path.join(health_dir(run_dir), entry))
        if port is not None:
            node["ports"].add(port)
    return nodes


def in_namespace(pid, netns):
    """Whether pid runs in the network namespace named netns (the same namespace, not one that
    had its name before)."""
    try:
        mine = os.stat("/proc/%d/ns/net" % pid)
        node = os.stat(os.path.join(NETNS_DIR, netns))
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (node.st_dev, node.st_ino)


def start_argv(run_dir, python, netns, port, action):
    return ["ip", "netns", "exec", netns, python, os.path.join(health_dir(run_dir), server.SCRIPT), action,
            "--name", netns, "--port", str(port), "--pidfile", node_file(run_dir, netns, "pid", port),
            "--logfile", node_file(run_dir, netns, "log", port), "--health-file", node_file(run_dir, netns, "json")]


def kill_line(netns, port, pid, pidfile):
    return "kill %d  # the health check server of %s:%d, by %s" % (pid, netns, port, pidfile)


def end_servers(module, servers):
    """End the servers, given as (pid, pidfile), by pid, all at once; fail naming those that outlive SIGKILL."""
    pidfiles = dict(servers)
    _killed, stuck = processes.end_all(list(pidfiles), lambda pid: server.is_server(pid, pidfiles[pid]), END_GRACE_S)
    if stuck:
        module.fail_json(msg="health check server pid(s) %s did not end, even after SIGKILL" % ", ".join(map(str, stuck)))


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def remove(path):
    """Delete a file that may be gone already (an ended server deletes its own pidfile)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_empty_health_dir(run_dir):
    """Delete the health directory when it holds nothing but the server script."""
    directory = health_dir(run_dir)
    try:
        if set(os.listdir(directory)) <= {server.SCRIPT}:
            remove(os.path.join(directory, server.SCRIPT))
            os.rmdir(directory)
    except FileNotFoundError:
        pass


def write_atomically(path, text, mode=0o644):
    temporary = path + ".new"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.rename(temporary, path)


def plan_present(run_dir, netns, checks, script_changed):
    """(starts, ends, leftovers): starts are (port, action); ends are (port, pid) of servers to
    end first (their port is gone, or they run in a namespace that is no longer the node's);
    leftovers are the files of the ports gone."""
    known = known_files(run_dir, netns).get(netns, dict(ports=set(), files=[]))
    starts, ends = [], []
    for port in sorted(checks):
        pidfile = node_file(run_dir, netns, "pid", port)
        pid = server.running_pid(pidfile)
        if pid is not None and not in_namespace(pid, netns):
            ends.append((port, pid))
            starts.append((port, "start"))
        elif script_changed:
            starts.append((port, "restart" if pid is not None else "start"))
        elif server.running_with(pidfile, netns, port, node_file(run_dir, netns, "log", port),
                                 node_file(run_dir, netns, "json")) is None:
            starts.append((port, "start"))
    gone = sorted(port for port in known["ports"] if port not in checks)
    for port in gone:
        pid = server.running_pid(node_file(run_dir, netns, "pid", port))
        if pid is not None:
            ends.append((port, pid))
    leftovers = [node_file(run_dir, netns, suffix, port) for port in gone for suffix in ("pid", "log")]
    return starts, ends, [path for path in leftovers if os.path.lexists(path)]


def files_of_vanished_nodes(run_dir, netns):
    """The files of the other nodes whose namespace is gone (a node scaled away, its servers
    ended with it): nothing will ask for them again."""
    files = []
    for other, known in sorted(known_files(run_dir).items()):
        if other == netns or os.path.exists(os.path.join(NETNS_DIR, other)):
            continue
        if not any(server.running_pid(node_file(run_dir, other, "pid", port)) for port in known["ports"]):
            files += known["files"]
    return files


def servers_text(netns, ports):
    return "".join("%s:%d health check server\n" % (netns, port) for port in sorted(ports))


def present(module, run_dir, python, netns, checks):
    """Exactly one server per health check of CHECKS (healthcheck.health_checks) running in
    NETNS, none for its other ports; the node's health file written first. In check mode only
    planned. Returns the result part: changed, health_check_node_ports, started, stopped,
    commands, and diff (the health file and the servers, before and after)."""
    if checks and not os.path.exists(os.path.join(NETNS_DIR, netns)):
        if not module.check_mode:
            module.fail_json(msg="network namespace %s does not exist (ip netns list); create the node first, "
                                 "e.g. with the lab_node role" % netns)
        module.warn("network namespace %s does not exist yet: every health check server would be started" % netns)
    python = python or sys.executable
    script = os.path.join(health_dir(run_dir), server.SCRIPT)
    source = inspect.getsource(server)
    script_changed = bool(checks) and read_text(script) != source
    health_path = node_file(run_dir, netns, "json")
    have_file = read_text(health_path)
    want_file = healthcheck.health_file(checks) if checks else None
    starts, ends, leftovers = plan_present(run_dir, netns, checks, script_changed)
    if not checks and have_file is not None:
        leftovers.append(health_path)
    leftovers += files_of_vanished_nodes(run_dir, netns)
    commands = [kill_line(netns, port, pid, node_file(run_dir, netns, "pid", port)) for port, pid in ends]
    commands += [" ".join(start_argv(run_dir, python, netns, port, action)) for port, action in starts]
    commands += ["rm %s" % path for path in leftovers]

    if not module.check_mode:
        if script_changed:
            os.makedirs(health_dir(run_dir), mode=0o755, exist_ok=True)
            write_atomically(script, source, 0o755)
        # Before any server starts, so its first answer is already the new count.
        if want_file is not None and want_file != have_file:
            os.makedirs(health_dir(run_dir), mode=0o755, exist_ok=True)
            write_atomically(health_path, want_file)
        end_servers(module, [(pid, node_file(run_dir, netns, "pid", port)) for port, pid in ends])
        for port, action in starts:
            rc, stdout, stderr = module.run_command(start_argv(run_dir, python, netns, port, action))
            if rc != 0:
                module.fail_json(msg="the health check server of %s:%d did not start: %s"
                                     % (netns, port, (stderr or stdout).strip()),
                                 rc=rc, stdout=stdout, stderr=stderr, commands=commands)
        for path in leftovers:
            remove(path)
        if not checks and not known_files(run_dir):
            # No node has a server or a file left: the script goes too, so a lab without health
            # checks has nothing here.
            remove_empty_health_dir(run_dir)

    # The servers answering in the node before: those ended for their port gone, and the
    # declared ones running there as declared (not those in a namespace no longer the node's).
    before_ports = set(port for port, _pid in ends if port not in checks) | set(
        port for port in checks if (port, "start") not in starts)
    return dict(
        changed=bool(script_changed or want_file != have_file or commands),
        health_check_node_ports=healthcheck.summary(checks),
        started=["%s:%d" % (netns, port) for port, _action in starts],
        stopped=["%s:%d" % (netns, port) for port, _pid in ends if port not in checks],
        commands=commands,
        diff=[
            dict(before=have_file or "", after=want_file or "", before_header=health_path + " (before)",
                 after_header=health_path + " (after)"),
            dict(before=servers_text(netns, before_ports), after=servers_text(netns, checks),
                 before_header="%s: health check servers (before)" % netns,
                 after_header="%s: health check servers (after)" % netns),
        ])


def absent(module, run_dir, netns=None):
    """No server of NETNS (of any node without it) running, by their pidfiles, and none of its
    files left (without NETNS, no RUN_DIR/health/ at all). In check mode only planned. Returns
    the result part: changed, started (none), stopped, commands."""
    known = known_files(run_dir, netns)
    running = []
    for node in sorted(known):
        for port in sorted(known[node]["ports"]):
            pidfile = node_file(run_dir, node, "pid", port)
            pid = server.running_pid(pidfile)
            if pid is not None:
                running.append((node, port, pid, pidfile))
    commands = [kill_line(node, port, pid, pidfile) for node, port, pid, pidfile in running]
    directory = health_dir(run_dir)
    if netns is None:
        removed = [directory] if os.path.lexists(directory) else []
        commands += ["rm -r %s" % path for path in removed]
    else:
        removed = [path for node in known.values() for path in node["files"]]
        commands += ["rm %s" % path for path in removed]
    if not module.check_mode:
        end_servers(module, [(pid, pidfile) for _node, _port, pid, pidfile in running])
        for path in removed:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                remove(path)
    return dict(changed=bool(commands), started=[],
                stopped=["%s:%d" % (node, port) for node, port, _pid, _pidfile in running], commands=commands)
