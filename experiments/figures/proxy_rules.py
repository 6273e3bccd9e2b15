"""Which of the dense proxy's runs stands for a rule the proxy did not run.

At the reference (the dense proxy's own shape) every rule's parameter table is sp's, except that the complete-mue
family keeps its absolute down-projection multiplier c = d/H (tests/test_rules.cpp checks both, LM and DiT share
the rule code). So the proxy sweeps run one rule of each family, and every other rule's transfer is read against
the proxy curve of the family member that ran: the same model trained the same way.
"""

SAME_TABLE_AT_REFERENCE = [("mup", "sp", "completep", "jiang-dmft", "mup-moe"),
                           ("complete-mue", "mup-total-width", "mup-no-route-scale")]


def proxy_rule(rule, proxy_rules):
    """The rule whose proxy curve stands for `rule`: itself if the proxy ran it, else the first of its family that
    the proxy ran, else None."""
    if rule in proxy_rules:
        return rule
    for family in SAME_TABLE_AT_REFERENCE:
        if rule in family:
            return next((r for r in family if r in proxy_rules), None)
    return None
