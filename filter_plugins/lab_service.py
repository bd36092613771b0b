# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""lab_service: the knobs of app1 that arrive from the command line.

``lab_source_ranges`` turns ``-e source_ranges=...`` (a list, or the comma-separated string
``-e`` gives) into the list of CIDRs app1's ``load_balancer_source_ranges`` takes, checked
with the kube_proxy module's own rules (an IPv4 CIDR with its prefix length, no host bits),
so that lab.yml refuses a bad one by the variable's name before anything changes, not the
module halfway through the build.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible.module_utils.six import string_types


def lab_source_ranges(value, name="source_ranges"):
    """The CIDRs of VALUE (a list, a comma-separated string, or empty), each checked."""
    if value in (None, ""):
        return []
    if isinstance(value, string_types):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise AnsibleFilterError("%s must be a list of CIDRs or a comma-separated string, got %r" % (name, value))
    cidrs = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            network = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            raise AnsibleFilterError("%s: %r is not an IPv4 CIDR such as 203.0.113.0/24" % (name, text))
        if "/" not in text:
            raise AnsibleFilterError("%s: %r has no prefix length; write it as %s" % (name, text, network))
        if str(network) != text:
            raise AnsibleFilterError("%s: %r has host bits set; did you mean %s?" % (name, text, network))
        cidrs.append(text)
    return cidrs


class FilterModule(object):
    def filters(self):
        return {"lab_source_ranges": lab_source_ranges}
