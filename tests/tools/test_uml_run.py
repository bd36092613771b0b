"""tools/uml-run, for real: every test boots a User-mode Linux node (no mocks).

Boots are grouped (one node runs most checks) to keep the file at ~20-30 s.
Needs Debian's user-mode-linux package (make bootstrap installs it).
"""

import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import tempfile
import termios
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UML_RUN = os.path.join(REPO, 'tools', 'uml-run')
PROBE = '/etc/uml-run-probe'

# The script the main node runs: one line per check, "CHECK <name> ok|FAIL".
INSIDE = r'''
check() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "CHECK $name ok"; else echo "CHECK $name FAIL"; fi; }
echo "CWD $(pwd)"
echo OUT-ONLY
echo ERR-ONLY >&2
printf 'line1\nline2\n'
echo written-inside >from-guest.txt
check repo-writable test -s from-guest.txt
check host-root-cow touch /etc/uml-run-probe
check uid0 test "$(id -u)" = 0
check home test "$HOME" = /root
check inside test "$UML_RUN_INSIDE" = 1
check ansible-env-passed test "$ANSIBLE_PIPELINING" = True
check netns-dir ip netns add uml-test
check dummy-in-netns ip -n uml-test link add kube-ipvs0 type dummy
check addr-in-netns ip -n uml-test addr add 10.96.0.10/32 dev kube-ipvs0
check modprobe-ip_vs modprobe ip_vs
check br_netfilter test -d /sys/module/br_netfilter
check iptables-legacy sh -c 'iptables -V | grep -q legacy'
check iptables-works sh -c 'iptables -t nat -N UML-TEST && iptables -t nat -S UML-TEST | grep -q "^-N UML-TEST"'
check dev-shm test -d /dev/shm
check lo-up sh -c 'ip -br link show lo | grep -q UP'
ipvsadm -A -t 10.96.0.10:80 -s rr && ipvsadm -a -t 10.96.0.10:80 -r 10.0.0.2:8080 -m
echo IPVS-TABLE-BEGIN
ipvsadm -Ln
echo IPVS-TABLE-END
exit 7
'''


def uml_run(*args, env=None, **kw):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([UML_RUN, *args], env=e, **kw)


@pytest.fixture(scope='module', autouse=True)
def needs_uml():
    if not shutil.which('linux.uml') and not os.path.exists('/usr/bin/linux.uml'):
        pytest.fail('linux.uml is missing: apt-get install user-mode-linux (make bootstrap)')


@pytest.fixture(scope='module')
def workdir():
    """A scratch directory inside the repo (so inside the node it is shared)."""
    d = tempfile.mkdtemp(prefix='.uml-run-test.', dir=REPO)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope='module')
def node(workdir):
    """One boot: INSIDE runs in workdir; stdout/stderr land in files we keep the fds of."""
    assert not os.path.exists(PROBE), 'left over from an earlier run: ' + PROBE
    script = os.path.join(workdir, 'inside.sh')
    with open(script, 'w') as f:
        f.write(INSIDE)
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    # ANSIBLE_* reach CMD as they are here (the project's ansible.cfg turns pipelining on).
    p = uml_run('sh', script, cwd=workdir, stdout=out, stderr=err, timeout=120, env={'ANSIBLE_PIPELINING': 'True'})
    flags = {name: fcntl.fcntl(f.fileno(), fcntl.F_GETFL) for name, f in (('out', out), ('err', err))}
    out.seek(0)
    err.seek(0)
    res = {'rc': p.returncode, 'out': out.read(), 'err': err.read(), 'flags': flags}
    print(res['out'].decode(errors='replace'))
    print(res['err'].decode(errors='replace'))
    return res


def test_exit_status_passes_through(node):
    assert node['rc'] == 7


def test_streams_are_separate_and_without_cr(node):
    assert b'OUT-ONLY\n' in node['out'] and b'OUT-ONLY' not in node['err']
    assert b'ERR-ONLY\n' in node['err'] and b'ERR-ONLY' not in node['out']
    assert b'line1\nline2\n' in node['out']
    assert b'\r' not in node['out'] and b'\r' not in node['err']


def test_our_fds_stay_blocking(node):
    assert not node['flags']['out'] & os.O_NONBLOCK
    assert not node['flags']['err'] & os.O_NONBLOCK


def checks(node):
    found = {}
    for line in node['out'].decode().splitlines():
        if line.startswith('CHECK '):
            _, name, result = line.split()
            found[name] = result
    return found


@pytest.mark.parametrize('name', [
    'uid0', 'home', 'inside', 'ansible-env-passed', 'repo-writable', 'host-root-cow',
    'netns-dir', 'dummy-in-netns', 'addr-in-netns', 'modprobe-ip_vs', 'br_netfilter',
    'iptables-legacy', 'iptables-works', 'dev-shm', 'lo-up'])
def test_inside(node, name):
    assert checks(node).get(name) == 'ok'


def test_cwd_and_repo_shared_read_write(node, workdir):
    assert ('CWD %s\n' % workdir).encode() in node['out']
    with open(os.path.join(workdir, 'from-guest.txt')) as f:
        assert f.read() == 'written-inside\n'


def test_host_root_not_written(node):
    assert checks(node).get('host-root-cow') == 'ok'     # the write did succeed inside
    assert not os.path.exists(PROBE)


def test_ipvs_table(node):
    out = node['out'].decode()
    table = out[out.index('IPVS-TABLE-BEGIN'):out.index('IPVS-TABLE-END')]
    assert 'IP Virtual Server version' in table
    assert 'TCP  10.96.0.10:80 rr' in table
    assert '10.0.0.2:8080' in table and 'Masq' in table


def test_live_output_then_timeout(tmp_path):
    """Output arrives while CMD still runs; the timeout kills the node with 124 and
    leaves no run directory behind."""
    env = dict(os.environ, UML_RUN_TIMEOUT='8', UML_RUN_TMPDIR=str(tmp_path))
    start = time.monotonic()
    p = subprocess.Popen([UML_RUN, 'sh', '-c', 'echo started; sleep 60'], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert p.stdout.readline() == b'started\n'
        assert p.poll() is None                     # streamed while still running
        _, err = p.communicate(timeout=40)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 124
    assert b'timed out' in err
    assert time.monotonic() - start < 40
    assert not [n for n in os.listdir(tmp_path) if n.startswith('uml-run.')]


def test_boot_failure_has_its_own_code_and_console_tail():
    p = uml_run('true', env={'UML_RUN_KARGS': 'init=/nonexistent', 'UML_RUN_TIMEOUT': '60'},
                cwd=REPO, capture_output=True, timeout=90)
    assert p.returncode == 125
    assert b'Kernel panic' in p.stderr


def test_read_only_fallback():
    p = uml_run('sh', '-c', 'cat /run/uml-run/root; touch /etc/x 2>/dev/null || echo etc-ro; '
                'touch /tmp/x && echo tmp-rw; modprobe ip_vs && ipvsadm -Ln >/dev/null && '
                'echo ipvs-ok; iptables -V', env={'UML_RUN_ROOT': 'ro'}, cwd=REPO,
                capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[:4] == ['ro', 'etc-ro', 'tmp-rw', 'ipvs-ok'], p.stderr
    assert lines[4].startswith('iptables v') and lines[4].endswith('(legacy)')


def test_interactive_shell_on_a_terminal():
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(UML_RUN, [UML_RUN, '-i', 'sh'])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', 33, 111, 0, 0))
    buf = b''
    sent = False
    end = time.monotonic() + 90
    try:
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                buf += data
            if not sent and b'# ' in buf:
                os.write(fd, b'stty size; tty; exit 4\r')
                sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 4, buf
    assert b'33 111' in buf and b'/dev/tty1' in buf
