"""tools/uml-modprobe: which modules it inserts, in which order, for a name, alias or built-in.

The kernel call (finit_module) is replaced by a recorder: what is tested is the resolution
and ordering over a modules directory written here. The real thing loads ip_vs, dummy and
br_netfilter in every user-mode-linux node (tests/tools/test_uml_run.py, make test).
"""

import importlib.machinery
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOADER = importlib.machinery.SourceFileLoader("uml_modprobe", os.path.join(REPO, "tools", "uml-modprobe"))
SPEC = importlib.util.spec_from_loader("uml_modprobe", LOADER)
uml_modprobe = importlib.util.module_from_spec(SPEC)
LOADER.exec_module(uml_modprobe)

IPVS = "kernel/net/netfilter/ipvs/"
MODULES_DEP = """\
{ipvs}ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz
{ipvs}ip_vs_rr.ko.xz: {ipvs}ip_vs.ko.xz kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nf_conntrack.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/lib/libcrc32c.ko.xz:
kernel/drivers/net/dummy.ko.xz:
kernel/net/bridge/br_netfilter.ko.xz:
kernel/net/ipv4/ipip.ko.xz:
""".format(ipvs=IPVS)


@pytest.fixture(name="inserted")
def fixture_inserted(tmp_path, monkeypatch):
    (tmp_path / "modules.dep").write_text(MODULES_DEP)
    (tmp_path / "modules.alias").write_text("alias rtnl-link-dummy dummy\n")
    (tmp_path / "modules.softdep").write_text("softdep br_netfilter pre: ipip\n")
    (tmp_path / "modules.builtin").write_text("kernel/net/bridge/bridge.ko\n")
    (tmp_path / "modules.builtin.modinfo").write_bytes(b"bridge.alias=net-pf-7\0bridge.license=GPL\0")
    monkeypatch.setenv("UML_RUN_MODDIR", str(tmp_path))
    inserted = Inserted()
    monkeypatch.setattr(uml_modprobe, "loaded_modules", lambda: set(inserted.loaded))
    monkeypatch.setattr(uml_modprobe, "insert", lambda db, path, params, verbose: inserted.append((path, params)))
    return inserted


class Inserted(list):
    """The (path, params) inserted, in order; ``loaded`` is what /proc/modules lists before."""

    def __init__(self):
        super().__init__()
        self.loaded = set()


def paths(inserted):
    return [os.path.basename(path) for path, _params in inserted]


def test_dependencies_go_in_first_deepest_first(inserted):
    assert uml_modprobe.modprobe_main(["ip_vs_rr"]) == 0
    assert paths(inserted) == ["libcrc32c.ko.xz", "nf_conntrack.ko.xz", "ip_vs.ko.xz", "ip_vs_rr.ko.xz"]


def test_what_is_loaded_already_is_left_alone(inserted):
    inserted.loaded.update({"libcrc32c", "nf_conntrack"})
    assert uml_modprobe.modprobe_main(["ip_vs"]) == 0
    assert paths(inserted) == ["ip_vs.ko.xz"]


def test_parameters_go_to_the_named_module_only(inserted):
    assert uml_modprobe.modprobe_main(["ip_vs", "conn_tab_bits=12"]) == 0
    assert inserted[-1] == (IPVS + "ip_vs.ko.xz", "conn_tab_bits=12")
    assert all(params == "" for _path, params in inserted[:-1])


def test_an_alias_loads_its_module(inserted):
    assert uml_modprobe.modprobe_main(["rtnl-link-dummy"]) == 0
    assert paths(inserted) == ["dummy.ko.xz"]


def test_a_soft_dependency_goes_in_before(inserted):
    assert uml_modprobe.modprobe_main(["br_netfilter"]) == 0
    assert paths(inserted) == ["ipip.ko.xz", "br_netfilter.ko.xz"]


def test_a_built_in_module_or_alias_needs_nothing(inserted):
    assert uml_modprobe.modprobe_main(["bridge"]) == 0
    assert uml_modprobe.modprobe_main(["net-pf-7"]) == 0
    assert inserted == []


def test_all_loads_every_name_and_dashes_are_underscores(inserted):
    assert uml_modprobe.modprobe_main(["-a", "dummy", "br-netfilter"]) == 0
    assert paths(inserted) == ["dummy.ko.xz", "ipip.ko.xz", "br_netfilter.ko.xz"]


def test_dry_run_inserts_nothing_but_still_knows_the_module(inserted):
    assert uml_modprobe.modprobe_main(["--dry-run", "ip_vs"]) == 0
    assert uml_modprobe.modprobe_main(["-n", "no_such_module"]) == 1
    assert inserted == []


def test_an_unknown_module_fails_and_says_so_unless_quiet(inserted, capsys):
    assert uml_modprobe.modprobe_main(["no_such_module"]) == 1
    assert "Module no_such_module not found" in capsys.readouterr().err
    assert uml_modprobe.modprobe_main(["-q", "no_such_module"]) == 1
    assert capsys.readouterr().err == ""


def test_first_time_refuses_a_module_already_in(inserted, capsys):
    inserted.loaded.add("dummy")
    assert uml_modprobe.modprobe_main(["--first-time", "dummy"]) == 1
    assert "Module already in kernel" in capsys.readouterr().err


def test_an_unsupported_option_is_refused_not_ignored(inserted, capsys):
    assert uml_modprobe.modprobe_main(["--show-depends", "ip_vs"]) == 1
    assert "unsupported option --show-depends" in capsys.readouterr().err
    assert inserted == []
