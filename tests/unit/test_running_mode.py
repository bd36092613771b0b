"""sync.running_mode: the mode a node runs, told from its live state (kube_proxy state=query)."""

from conftest import FIXTURES
from kube_proxy import sync

IPTABLES_SAVE = (FIXTURES / "iptables-nft-save.txt").read_text()
KUBE_IPVS0 = "5: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\n"


def test_kube_services_in_nat_alone_is_iptables_mode():
    assert "*nat" in IPTABLES_SAVE and ":KUBE-SERVICES" in IPTABLES_SAVE
    assert sync.running_mode(sync.Live(iptables_save=IPTABLES_SAVE)) == "iptables"


def test_ipvs_mode_writes_kube_services_too_but_only_it_has_kube_ipvs0():
    assert sync.running_mode(sync.Live(iptables_save=IPTABLES_SAVE, ipvs_device=KUBE_IPVS0)) == "ipvs"


def test_the_nftables_table_is_nftables_mode():
    table = (FIXTURES / "nft-app1.json").read_text()
    assert sync.running_mode(sync.Live(iptables_save="", nft_table=table)) == "nftables"


def test_a_node_kube_proxy_never_programmed_runs_no_mode():
    assert sync.running_mode(sync.Live(iptables_save="*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")) is None
