"""Label matchers behave like Alertmanager's: anchored regexes, missing labels read as empty."""

import pytest

from runbot.runbooks.match import MatcherError, explain, parse_matcher

LABELS = {"alertname": "HighErrorRate", "service": "checkout", "env": "prod"}


@pytest.mark.parametrize("text,hit", [
    ('alertname = "HighErrorRate"', True),
    ('alertname="HighErrorRate"', True),
    ("alertname = HighErrorRate", True),
    ('service =~ "api|checkout"', True),
    ('service =~ "check"', False),  # anchored: a substring is not a match
    ('service =~ "check.*"', True),
    ('env != "dev"', True),
    ('env !~ "prod|staging"', False),
    ('team = ""', True),  # a missing label is the empty string
    ('team != ""', False),
    ('team =~ ".*"', True),
])
def test_matcher_semantics(text, hit):
    assert parse_matcher(text).matches(LABELS) is hit


@pytest.mark.parametrize("bad", ['service =~ "(api"', "= x", "1abc = x", 'service ~= "x"'])
def test_malformed_matchers_are_rejected_with_the_reason(bad):
    with pytest.raises(MatcherError):
        parse_matcher(bad)


def test_explain_says_which_matcher_failed_and_what_the_label_was():
    ms = [parse_matcher('alertname = "DiskFull"'), parse_matcher('team = "infra"')]
    reasons = explain(ms, LABELS)
    assert reasons == ['alertname="DiskFull" does not hold: alertname is "HighErrorRate"',
                       'team="infra" does not hold: team is missing']
