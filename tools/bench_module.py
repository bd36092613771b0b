"""Run library/kube_proxy.py once, the way Ansible runs a module on a local host.

    python3 tools/bench_module.py ARGS.json

Ansible's AnsiballZ wrapper puts the module and its module_utils on the import path and runs
the module as __main__ with its arguments as JSON; this does the same (module_utils found as
ansible.module_utils.kube_proxy, arguments read by AnsibleModule from the JSON file) without
the zip, so tools/bench times what the module costs a playbook run, less Ansible's own task
overhead. At exit it writes the process's peak resident memory to stderr as
``BENCH_MAXRSS_KB=N`` (its children, iptables-restore and friends, are not counted in it).
"""

import atexit
import os
import resource
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report_peak():
    sys.stderr.write("BENCH_MAXRSS_KB=%d\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    sys.stderr.flush()


def main():
    import ansible.module_utils  # pylint: disable=import-outside-toplevel

    ansible.module_utils.__path__.append(os.path.join(REPO, "module_utils"))
    module = os.path.join(REPO, "library", "kube_proxy.py")
    sys.argv = [module] + sys.argv[1:]
    atexit.register(_report_peak)
    runpy.run_path(module, run_name="__main__")


if __name__ == "__main__":
    main()
