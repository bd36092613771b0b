"""Run one of the repository's modules once, the way Ansible runs a module on a local host.

    python3 tools/bench_module.py ARGS.json              # library/kube_proxy.py
    python3 tools/bench_module.py ARGS.json lab_netns    # library/lab_netns.py

Ansible's AnsiballZ wrapper puts the module and its module_utils on the import path and runs
the module as __main__ with its arguments as JSON; this does the same (module_utils found as
ansible.module_utils.kube_proxy, arguments read by AnsibleModule from the JSON file) without
the zip, so tools/bench times what the module costs a playbook run, less Ansible's own task
overhead. At exit it writes the process's peak resident memory to stderr as
``BENCH_MAXRSS_KB=N`` (its children, iptables-restore and friends, are not counted in it).

The peak is VmHWM from /proc/self/status, the high-water mark of this program's own memory
since exec. Not getrusage's ru_maxrss: Linux carries that over from the parent's size at
fork, so it reported the bench's own size, not the module's.
"""

import atexit
import os
import resource
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peak_kb():
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _report_peak():
    sys.stderr.write("BENCH_MAXRSS_KB=%d\n" % _peak_kb())
    sys.stderr.flush()


def main():
    import ansible.module_utils  # pylint: disable=import-outside-toplevel

    ansible.module_utils.__path__.append(os.path.join(REPO, "module_utils"))
    args, name = sys.argv[1], (sys.argv[2:] or ["kube_proxy"])[0]
    module = os.path.join(REPO, "library", name + ".py")
    sys.argv = [module, args]
    atexit.register(_report_peak)
    runpy.run_path(module, run_name="__main__")


if __name__ == "__main__":
    main()
