"""A large iptables sync split into several restores (iptables.plan with batch_rules): every
state between two restores must be one kube-proxy could have written.

The restores are applied to a small model of ``iptables-restore --noflush`` (RestoreModel: each
COMMIT applies whole, a jump to a missing chain or the deletion of a chain still jumped to is
refused, as the kernel refuses them). After each restore the model's state is read back with
the module's own parse_save, and checked: no rule jumps to a chain that is not there; each
Service's own chains are all as they were or all as declared; a new Service is reached only once
all of it is there; and after the last restore a plan against the model finds nothing to do.
"""

import pytest

from kube_proxy import iptables
from lab_services import APP1, config

BATCH_RULES = 100  # small, so that a few hundred Services make many restores


def services(count, first=0, endpoints=("10.0.0.2", "10.0.0.3", "10.0.0.4"), **extra):
    return [dict(namespace="ns", name="svc%d" % index, cluster_ip="10.96.%d.%d" % divmod(index + 20, 250),
                 port=80, target_port=8080, endpoints=list(endpoints), **extra)
            for index in range(first, first + count)]


class RestoreModel:
    """The tables as ``iptables-restore --noflush`` changes them: {table: {chain: [rule]}}."""

    def __init__(self):
        self.tables = {table: {chain: [] for chain in builtins} for table, builtins in iptables.BUILTIN_CHAINS.items()}

    def restore(self, text):
        table = staged = None
        for line in text.splitlines():
            if line.startswith("*"):
                table, staged = line[1:], {chain: list(rules) for chain, rules in self.tables[line[1:]].items()}
            elif line == "COMMIT":
                self._check(table, staged)
                self.tables[table] = staged
            elif line.startswith(":"):
                staged[line[1:].split()[0]] = []
            else:
                self._edit(staged, line)

    @staticmethod
    def _edit(chains, line):
        action, chain, *rest = line.split(" ", 2)
        if action == "-X":
            assert chain in chains and not chains[chain], "cannot delete %s" % chain
            del chains[chain]
            return
        rule = rest[0]
        if action == "-I":
            position, rule = rule.split(" ", 1)
            chains[chain].insert(int(position) - 1, iptables.normalise_rule(rule))
        elif action == "-A":
            chains[chain].append(iptables.normalise_rule(rule))
        else:
            assert action == "-D", line
            chains[chain].remove(iptables.normalise_rule(rule))

    @staticmethod
    def _check(table, chains):
        for chain, rules in chains.items():
            for rule in rules:
                target = iptables.jump_target(rule)
                if target and target.startswith("KUBE-"):
                    assert target in chains, "%s: %s jumps to %s, which is not there" % (table, chain, target)

    def save(self):
        lines = []
        for table, chains in self.tables.items():
            lines.append("*" + table)
            lines.extend(":%s - [0:0]" % chain for chain in chains)
            lines.extend("-A %s %s" % (chain, iptables.rule_text(rule)) for chain, rules in chains.items() for rule in rules)
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def own_chains(state):
    """{service port: {chain: normalised rules}} of a rendered state's nat table."""
    nat = state["nat"]
    owned = {}
    for chain, owner in nat.owners.items():
        owned.setdefault(owner, {})[chain] = [iptables.normalise_rule(rule) for rule in nat.chains[chain]]
    return owned


def reached(model):
    """The chains nat's KUBE-SERVICES and KUBE-NODEPORTS jump to: the Services one can reach."""
    nat = model.tables["nat"]
    return {iptables.jump_target(rule) for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS") for rule in nat.get(chain, [])}


def synced(model, old, new):
    """Apply the split plan from model's state to new, checking every state in between."""
    plan = iptables.plan(new, iptables.parse_save(model.save()), batch_rules=BATCH_RULES)
    before, after = own_chains(old) if old else {}, own_chains(new)
    for number, text in enumerate(plan.transactions, start=1):
        model.restore(text)
        nat = model.tables["nat"]
        for owner in set(before) | set(after):
            was = all(nat.get(chain) == rules for chain, rules in before.get(owner, {}).items()) and owner in before
            now = all(nat.get(chain) == rules for chain, rules in after.get(owner, {}).items()) and owner in after
            entry = reached(model) & set(after.get(owner, {}) or before.get(owner, {}))
            assert was or now or not entry, "after restore %d of %d, %s is reached half-written" % (
                number, len(plan.transactions), owner)
    return plan


@pytest.fixture(name="model")
def fixture_model():
    return RestoreModel()


def test_a_small_sync_is_one_restore():
    plan = iptables.plan(iptables.render(config(*services(5))), iptables.parse_save(""), batch_rules=BATCH_RULES)
    assert len(plan.transactions) == 1
    assert plan.restore == plan.transactions[0]


def test_a_cold_start_goes_in_batches_and_reaches_no_service_before_the_last(model):
    declared = iptables.render(config(*services(60), dict(APP1, endpoints=[])))
    plan = synced(model, None, declared)
    assert len(plan.transactions) > 3
    for text in plan.transactions[:-1]:
        assert "-A KUBE-SERVICES " not in text and "-I PREROUTING" not in text, text[:500]
    assert not iptables.plan(declared, iptables.parse_save(model.save())).changed


def test_every_batch_holds_whole_services_and_about_batch_rules_rules(model):
    declared = iptables.render(config(*services(60)))
    plan = synced(model, None, declared)
    owners = declared["nat"].owners
    written = {}
    for number, text in enumerate(plan.transactions):
        chains = [line.split()[1] for line in text.splitlines() if line.startswith("-A ")]
        for chain in chains:
            if chain in owners:
                written.setdefault(owners[chain], set()).add(number)
        if number < len(plan.transactions) - 1:
            assert len(chains) < BATCH_RULES + 20, "restore %d writes %d rules" % (number, len(chains))
    assert all(len(numbers) == 1 for numbers in written.values()), written


def test_a_large_change_keeps_each_service_whole_in_between(model):
    old = iptables.render(config(*services(50)))
    synced(model, None, old)
    # Every Service loses an endpoint, ten go, ten new ones come, one loses all its endpoints.
    changed = services(39, endpoints=("10.0.0.2", "10.0.0.3")) + services(1, first=39, endpoints=()) \
        + services(10, first=50)
    new = iptables.render(config(*changed))
    plan = synced(model, old, new)
    assert len(plan.transactions) > 3
    assert plan.deleted_chains and all(name in plan.transactions[-1] for name in
                                      ("-X " + chain.split("/")[1] for chain in plan.deleted_chains))
    assert not iptables.plan(new, iptables.parse_save(model.save())).changed


def test_removing_every_service_at_once_leaves_nothing(model):
    old = iptables.render(config(*services(60)))
    synced(model, None, old)
    plan = synced(model, old, iptables.absent_state())
    assert len(plan.transactions) == 1
    assert not iptables.plan(iptables.absent_state(), iptables.parse_save(model.save())).changed
