"""tools/bench's report: the CSVs of one results folder as results.md and bench.png.

    python3 tools/bench_report.py [DIR]      (tools/bench --part report does the same)
"""

import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_lib as lib  # noqa: E402

SYNC_HEADERS = ("kernel", "mode", "N", "rules", "cold s", "no-change s", "1 endpoint s", "peak MB",
                "bare apply s", "first median ms", "first p95 ms", "last median ms", "last p95 ms",
                "conns", "failed", "note")
BASELINE_HEADERS = ("kernel", "services", "rules", "per-rule ansible.builtin.iptables s",
                    "empty playbook s", "module playbook s", "module alone s",
                    "task-for-task speedup", "per-rule playbook / module alone")


def read_rows(folder, name):
    path = os.path.join(folder, name + ".csv")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return lib.from_csv(handle.read())


def machine():
    """A line about the machine the figures come from."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    tools = []
    for argv in (["iptables", "--version"], ["nft", "--version"]):
        try:
            tools.append(subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip())
        except OSError:
            pass
    return "%d CPUs (%s), kernel %s, Python %s; %s" % (
        os.cpu_count() or 0, cpu, platform.release(), platform.python_version(), "; ".join(tools))


def markdown(rows, baseline, quick):
    parts = ["# kube-proxy-lab benchmark%s\n\n" % (" (QUICK=1 smoke run: small N, few connections)" if quick else ""),
             "Machine: %s.\n\n" % machine(),
             "Sync times are wall-clock seconds of one module run (tools/bench_module.py runs "
             "library/kube_proxy.py as Ansible runs a module locally); latency is TCP connect + first "
             "response byte from kpl-bench-client to the first and the last Service in rule order.\n\n"]
    if rows:
        parts.append("## Module sync and data-plane latency\n\n")
        parts.append(lib.markdown_table(rows, lib.RESULT_FIELDS, SYNC_HEADERS))
    if baseline:
        parts.append("\n## Baseline: per-rule ansible.builtin.iptables\n\n")
        parts.append(lib.markdown_table(baseline, lib.BASELINE_FIELDS, BASELINE_HEADERS))
    return "".join(parts)


def plot(rows, path):
    """Three panels, per kernel and mode, against N: the latency to the first and the last
    Service; the last minus the first (probed alternately, so drift on a shared machine
    cancels out: this is the rule walk's own cost); the module's sync time."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.8))
    for key, series in sorted(lib.series(rows).items()):
        label = "%s (%s)" % (key[1], key[0].split()[0])
        sizes = [int(row["services"]) for row in series]
        last = [float(row["last_median_ms"] or "nan") for row in series]
        first = [float(row["first_median_ms"] or "nan") for row in series]
        line = left.plot(sizes, last, marker="o", label=label + " last")[0]
        colour = line.get_color()
        left.plot(sizes, first, marker=".", linestyle=":", color=colour, label=label + " first")
        middle.plot(sizes, [b - a for a, b in zip(first, last)], marker="o", color=colour, label=label)
        right.plot(sizes, [float(row["cold_s"]) for row in series], marker="o", label=label + " cold", color=colour)
        right.plot(sizes, [float(row["onechange_s"]) for row in series], marker=".", linestyle=":",
                   color=colour, label=label + " 1 endpoint")
    left.set(xscale="log", xlabel="Services (3 endpoints each)", ylabel="new connection, median ms",
             title="Latency to the first / last Service")
    middle.axhline(0, color="grey", linewidth=0.8)
    middle.set(xscale="log", xlabel="Services (3 endpoints each)", ylabel="ms",
               title="Last minus first Service, median")
    right.set(xscale="log", yscale="log", xlabel="Services (3 endpoints each)", ylabel="seconds",
              title="Module sync time")
    for axes in (left, middle, right):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(folder, quick=False):
    rows = read_rows(folder, "native") + read_rows(folder, "uml")
    baseline = read_rows(folder, "baseline")
    written = []
    md_path = os.path.join(folder, "results.md")
    with open(md_path, "w", encoding="utf-8") as handle:
        handle.write(markdown(rows, baseline, quick))
    written.append(md_path)
    if rows:
        png_path = os.path.join(folder, "bench.png")
        plot(rows, png_path)
        written.append(png_path)
    return written


if __name__ == "__main__":
    for written_path in report(sys.argv[1] if len(sys.argv) > 1 else "bench-results"):
        print("wrote", written_path)
