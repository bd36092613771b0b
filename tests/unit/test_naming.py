"""Chain names must be the ones kube-proxy computes: checked against its own test fixtures."""

import pytest

from kube_proxy.naming import endpoint_chain, service_chain


@pytest.mark.parametrize(
    "port_name, proto, expected",
    [
        # pkg/proxy/iptables/proxier_test.go (TestOverallIPTablesRules and friends)
        ("ns1/svc1:p80", "tcp", "KUBE-SVC-XPGD46QRK7WJZT7O"),
        ("ns2/svc2:p80", "tcp", "KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
        ("ns3/svc3:p80", "tcp", "KUBE-SVC-X27LE4BHSL4DOUIK"),
        ("ns4/svc4:p80", "tcp", "KUBE-SVC-4SW47YFZTEDKD3PK"),
        ("ns2/svc2:p8080", "tcp", "KUBE-SVC-2VJB64SDSIJUP5T6"),
        # an unnamed port: the servicePortName is just ns/name (TestInternalTrafficPolicy)
        ("ns1/svc1", "tcp", "KUBE-SVC-AQI2S6QIMU7PVVRP"),
    ],
)
def test_service_chain_matches_kube_proxy_fixtures(port_name, proto, expected):
    assert service_chain(port_name, proto) == expected


@pytest.mark.parametrize(
    "port_name, proto, endpoint, expected",
    [
        ("ns1/svc1:p80", "tcp", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        ("ns2/svc2:p80", "tcp", "10.180.0.2:80", "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
        ("ns4/svc4:p80", "tcp", "10.180.0.4:80", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
        ("ns4/svc4:p80", "tcp", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
        ("ns5/svc5:p80", "tcp", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
        ("ns1/svc1", "tcp", "10.0.1.1:80", "KUBE-SEP-3JOIVZTXZZRGORX4"),
        ("ns1/svc1", "tcp", "10.0.1.3:80", "KUBE-SEP-XGJFVO3L2O5SRFNT"),
    ],
)
def test_endpoint_chain_matches_kube_proxy_fixtures(port_name, proto, endpoint, expected):
    assert endpoint_chain(port_name, proto, endpoint) == expected


def test_names_fit_iptables_chain_limit():
    # iptables chain names are at most 28 characters; kube-proxy's are 25.
    assert len(service_chain("a-very-long-namespace-name/and-a-long-service-name:port", "sctp")) == 25


def test_protocol_and_endpoint_change_the_hash():
    assert service_chain("default/app1", "tcp") != service_chain("default/app1", "udp")
    assert endpoint_chain("default/app1", "tcp", "10.0.0.2:8080") != endpoint_chain("default/app1", "tcp", "10.0.0.3:8080")
