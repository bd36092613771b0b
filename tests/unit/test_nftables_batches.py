"""A large nftables cold start in several ``nft -f`` transactions (nftables.batched_scripts):
together they write exactly the lines of the one-transaction script, and each transaction
holds whole Services: their chains, their rules and the map elements that lead to them.
(tests/unit/test_nftables.py holds the golden tests of the one-transaction script.)
"""

from collections import Counter

from kube_proxy import nftables
from lab_services import APP1, DNS, NO_ENDPOINTS, STICKY, config

BATCH_LINES = 60


def services(count):
    return [dict(namespace="ns", name="svc%d" % index, cluster_ip="10.96.%d.%d" % divmod(index + 20, 250),
                 port=80, target_port=8080, endpoints=["10.0.0.2", "10.0.0.3", "10.0.0.4"][:index % 4])
            for index in range(count)]


def table(*declared):
    return nftables.render(config(*declared, mode="nftables"), "10.96.0.0/16")


def added_chain(line):
    return line.split()[4] if line.startswith("add chain ") else None


def test_a_small_table_is_one_transaction_the_whole_script():
    desired = table(APP1, STICKY, DNS)
    assert nftables.batched_scripts(desired, BATCH_LINES * 100) == [nftables.script(desired, live_exists=False)]


def test_the_transactions_write_exactly_the_whole_script():
    desired = table(*services(40), STICKY, NO_ENDPOINTS)
    scripts = nftables.batched_scripts(desired, BATCH_LINES)
    assert len(scripts) > 3
    whole = [line for line in nftables.script(desired, live_exists=False).splitlines() if line]
    batched = [line for text in scripts for line in text.splitlines() if line]
    assert Counter(batched) == Counter(whole)


def test_each_transaction_after_the_first_holds_whole_services_and_what_leads_to_them():
    desired = table(*services(40), STICKY)
    scripts = nftables.batched_scripts(desired, BATCH_LINES)
    first = scripts[0].splitlines()
    assert first[0].startswith("add table ip kube-proxy")
    assert not [line for line in first if added_chain(line) in desired.owners]
    where = {}
    for number, text in enumerate(scripts):
        declared = set()
        for line in text.splitlines():
            chain = added_chain(line)
            if chain is not None:
                declared.add(chain)
                where.setdefault(desired.owners.get(chain), set()).add(number)
            elif line.startswith("add rule "):
                assert line.split()[4] in declared or number == 0, "rule before its chain: %s" % line
            elif line.startswith("add element ") and " : goto " in line:
                target = line.rstrip(" }").rsplit(" ", 1)[-1]
                if target in desired.owners:
                    assert target in declared, "element %s in another transaction than its chain" % line
        if number:
            assert sum(1 for line in text.splitlines() if line) < BATCH_LINES + 20
    assert all(len(numbers) == 1 for owner, numbers in where.items() if owner is not None), where
