"""kube-proxy's object names, computed the way pkg/proxy/iptables/proxier.go does.

A chain name carries a hash of the ServicePortName (and endpoint) so it stays short,
stable across restarts and unique per service port.
"""

import base64
import functools
import hashlib

SERVICE_CHAIN_PREFIX = "KUBE-SVC-"
ENDPOINT_CHAIN_PREFIX = "KUBE-SEP-"
# A service port's other chains carry the same hash as its KUBE-SVC- chain.
LOCAL_CHAIN_PREFIX = "KUBE-SVL-"
EXTERNAL_CHAIN_PREFIX = "KUBE-EXT-"
FIREWALL_CHAIN_PREFIX = "KUBE-FW-"


# A sync asks for each hash several times (a Service's KUBE-SVC, -SVL, -EXT and -FW chains
# share one, and every endpoint chain is named by its rule and by the chain itself).
@functools.lru_cache(maxsize=1 << 16)
def _hash16(text: str) -> str:
    # base32 writes each 5 bytes as 8 characters on their own: the first 16 characters of the
    # whole digest's encoding are those of its first 10 bytes.
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


def service_chain(port_name_string: str, proto: str) -> str:
    """portProtoHash: ``KUBE-SVC-`` + 16 chars of base32(sha256(servicePortName + protocol))."""
    return SERVICE_CHAIN_PREFIX + _hash16(port_name_string + proto)


def local_chain(port_name_string: str, proto: str) -> str:
    """The chain of the service port's Local-policy endpoints."""
    return LOCAL_CHAIN_PREFIX + _hash16(port_name_string + proto)


def external_chain(port_name_string: str, proto: str) -> str:
    """The chain every external destination (NodePort, load balancer IP, external IP) jumps to."""
    return EXTERNAL_CHAIN_PREFIX + _hash16(port_name_string + proto)


def firewall_chain(port_name_string: str, proto: str) -> str:
    """The chain that applies loadBalancerSourceRanges to the load balancer IPs."""
    return FIREWALL_CHAIN_PREFIX + _hash16(port_name_string + proto)


def endpoint_chain(port_name_string: str, proto: str, endpoint: str) -> str:
    """servicePortEndpointChainName: the hash also covers the endpoint ``IP:port``."""
    return ENDPOINT_CHAIN_PREFIX + _hash16(port_name_string + proto + endpoint)
