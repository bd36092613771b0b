# kube-proxy-lab. Run as root on Debian/Ubuntu:
#   make lab [MODE=iptables|ipvs|nftables] [NODES=1..4] [PODS=N] [TYPE=NodePort|LoadBalancer] [POLICY=Local] [SOURCE_RANGES=CIDR,…] [UDP=1]   build the lab (installs what is missing first)
#   make observe [SOURCE=node|client|pod2] [COUNT=300] [MODE=…] [TARGET=cluster-ip|node-port|load-balancer|external-ip] [NODE=lab-node2] [SERVICE=dns]   watch the Service balance (in the running lab's layout)
#   make lab-shell [MODE=ipvs] [NODES=N]     a shell in a user-mode-linux node with the lab up
#   make teardown                            remove everything the lab made
#   make exercise E=NAME A=break|check|fix   a break-and-fix exercise in the running lab (README: Exercises)
#   make bench [QUICK=1]                     benchmark the module and the data plane (docs/performance.md)
#   make test                                lint + unit tests + a QUICK bench + Molecule (the lab, end to end)
# Every recipe runs with .venv/bin first in PATH.

MODE ?= iptables
# Molecule scenarios `make test` runs: one per mode, IPVS split in two (ipvs-classroom holds its
# slow classroom and guide tests). Where this kernel cannot load ip_vs, each IPVS scenario runs in
# a user-mode-linux node of its own, alongside the others (tools/run-scenarios); none is skipped.
SCENARIOS ?= default nftables ipvs ipvs-classroom
# Seconds one user-mode-linux run may take before it is killed (tools/uml-run); the QUICK
# bench gives its node 600 s whatever this says (tools/bench).
UML_RUN_TIMEOUT ?= 4200
export UML_RUN_TIMEOUT
PYTHON ?= python3
APT_PACKAGES := iproute2 iptables nftables ipset ipvsadm conntrack curl python3-venv python3-pip \
                user-mode-linux kmod procps iputils-arping gcc libc6-dev

VENV := .venv
VENV_STAMP := $(VENV)/.requirements-installed
# The unit tests parse the docs' Mermaid diagrams with mermaid itself, under Node.js
# (tests/unit/test_guide_diagrams.py); `make lab` needs neither.
MERMAID_CHECK := tools/mermaid-check
MERMAID_CHECK_STAMP := $(MERMAID_CHECK)/node_modules/.package-lock-installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help bootstrap packages node-packages lab lab-shell observe teardown exercise test lint unit bench bench-quick molecule

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

bootstrap: packages $(VENV_STAMP)

# apt: only what is missing, and `apt-get update` only when something is. One dpkg-query for
# every package (each process costs a fraction of a second in the user-mode-linux node).
packages:
	@installed=" $$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
	  | awk '$$2 == "install" && $$3 == "ok" && $$4 == "installed" {printf "%s ", $$1}')"; \
	missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  case "$$installed" in *" $$pkg "*) ;; *) missing="$$missing $$pkg" ;; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "bootstrap: installing$$missing"; \
	  apt-get update -qq; \
	  installable=""; \
	  for pkg in $$missing; do \
	    if apt-cache policy "$$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then installable="$$installable $$pkg"; \
	    else echo "bootstrap: WARNING: no apt package $$pkg here; skipped" >&2; fi; \
	  done; \
	  [ -z "$$installable" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$installable; \
	fi

# The virtualenv: created when missing, reinstalled when requirements.txt changes.
$(VENV_STAMP): requirements.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	@cp requirements.txt $@

# node and npm asked for by command, not by apt package: NodeSource's nodejs carries its own npm
# and conflicts with Debian's npm package, so asking apt for npm there would fail (or remove node).
node-packages:
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "bootstrap: installing nodejs npm"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; \
	fi

# tools/mermaid-check's pinned npm packages: installed when missing, reinstalled when
# package-lock.json changes (the stamp lives in node_modules, so removing that reinstalls too).
$(MERMAID_CHECK_STAMP): $(MERMAID_CHECK)/package-lock.json | node-packages
	cd $(MERMAID_CHECK) && npm ci --no-audit --no-fund
	@cp $< $@

lab: bootstrap
	@if [ "$(MODE)" = ipvs ] && ! tools/kernel-has-ipvs; then \
	  echo "make lab MODE=ipvs: this kernel has no IPVS (IP_VS) and cannot load it." >&2; \
	  echo "Run the lab inside a user-mode-linux node, whose kernel has it:  make lab-shell MODE=ipvs" >&2; \
	  exit 1; \
	fi
	ansible-playbook lab.yml -e mode=$(MODE) $(if $(NODES),-e nodes=$(NODES)) $(if $(PODS),-e pods=$(PODS)) \
	  $(if $(TYPE),-e service_type=$(TYPE)) $(if $(POLICY),-e traffic_policy=$(POLICY)) $(if $(SOURCE_RANGES),-e source_ranges=$(SOURCE_RANGES)) \
	  $(if $(filter-out 0,$(UDP)),-e udp_service=true)

# MODE only when given: without it, observe watches the lab in the mode it runs.
observe: bootstrap
	ansible-playbook playbooks/observe.yml $(if $(SOURCE),-e source=$(SOURCE)) $(if $(COUNT),-e count=$(COUNT)) \
	  $(if $(filter command line environment,$(origin MODE)),-e mode=$(MODE)) $(if $(TARGET),-e target=$(TARGET)) $(if $(NODE),-e node=$(NODE)) \
	  $(if $(SERVICE),-e service=$(SERVICE))

# The node's kernel has IPVS but no nf_tables for ip tables: MODE=nftables cannot run there.
lab-shell: bootstrap
	UML_RUN_TIMEOUT=0 tools/uml-run -i bash -c 'ansible-playbook lab.yml -e mode=$(MODE) $(if $(NODES),-e nodes=$(NODES)) $(if $(PODS),-e pods=$(PODS)) && \
	  echo "The lab is up in mode $(MODE) inside this node; try: ip netns exec lab-node ipvsadm -Ln. exit leaves (and discards) the node." && \
	  exec bash --norc -i'

teardown: bootstrap
	ansible-playbook playbooks/teardown.yml

# Without E it fails listing the exercises; the mode, nodes and pods are the running lab's.
E ?=
A ?= check
exercise: bootstrap
	ansible-playbook playbooks/exercise.yml -e exercise=$(E) -e step=$(A)

test: lint unit bench-quick molecule

# Sync time, memory and connection latency per mode and N, in kpl-bench-* namespaces; results in
# bench-results/ (bench-results/quick/ with QUICK=1). IPVS runs in the user-mode-linux node
# when this kernel has none. A benchmark, not a test: it asserts no timing, but fails when the
# connections to a Service fail (a broken data plane).
bench: bootstrap
	tools/bench $(if $(filter-out 0,$(QUICK)),--quick)

# make test runs the QUICK bench once (under 2 minutes), so the script stays alive.
bench-quick: bootstrap
	tools/bench --quick

lint: bootstrap
	yamllint -s .
	ansible-lint

unit: bootstrap $(MERMAID_CHECK_STAMP)
	pytest -q tests/unit tests/tools

molecule: bootstrap
	tools/run-scenarios $(SCENARIOS)
