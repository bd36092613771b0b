"""The Ansible argument that carries the lab's Services, shared by the modules that take them
(kube_proxy, kube_proxy_health), so both accept exactly the same list.

Ansible checks only that it is a list of mappings. Each entry's fields are checked by
model.build_service, the way the API server checks a Service, with errors that name the
field (services[3].port); Ansible's suboption handling would check every field a second time,
which cost 1.8 s of a run at 10,000 Services (docs/performance.md). The modules'
DOCUMENTATION still lists every suboption for ansible-doc, and tests/unit holds it to
model.SERVICE_FIELDS.
"""

SERVICES = dict(type="list", elements="dict", default=[])
