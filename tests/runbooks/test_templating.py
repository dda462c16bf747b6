"""Templates run sandboxed; secret() yields an opaque reference, resolved only at the last moment."""

import pytest

from runbot.redaction import Redactor
from runbot.runbooks.templating import (
    TemplateFailure,
    analyze,
    mask_placeholders,
    render,
    resolve_secrets,
    secret_refs,
)

SCOPE = {"alert": {"labels": {"service": "api"}}, "params": {"n": 2}, "steps": {"q": {"value": 0.2}},
         "run": {"id": "r1"}, "incident": {}}


def test_a_lone_expression_keeps_its_type_and_text_renders_as_text():
    assert render("{{ steps.q.value > 0.1 }}", SCOPE) is True
    assert render("{{ params.n * 2 }}", SCOPE) == 4
    assert render("svc={{ alert.labels.service }}", SCOPE) == "svc=api"
    assert render({"a": ["{{ params.n }}", 1]}, SCOPE) == {"a": [2, 1]}


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ alert.__class__ }}",
    "{{ run.update({'id': 'x'}) }}",
])
def test_the_sandbox_refuses_python_internals_and_mutation(evil):
    with pytest.raises(TemplateFailure):
        render(evil, SCOPE)


def test_undefined_values_are_errors_not_empty_strings():
    with pytest.raises(TemplateFailure, match="nope"):
        render("{{ alert.labels.nope }}", SCOPE)
    assert render("{{ alert.labels.nope | default('none') }}", SCOPE) == "none"


def test_secret_renders_a_reference_that_is_resolved_and_registered_late():
    rendered = render({"h": "Bearer {{ secret('kv/deployer#token') }}"}, SCOPE)
    assert "s3cret" not in str(rendered)
    assert secret_refs(rendered) == ["kv/deployer#token"]
    assert mask_placeholders(rendered) == {"h": "Bearer ****(kv/deployer#token)"}
    red = Redactor()
    real = resolve_secrets(rendered, lambda ref: "s3cret-value", red)
    assert real == {"h": "Bearer s3cret-value"}
    assert red.redact("echo s3cret-value") == "echo ****"


def test_analyze_reports_names_step_and_param_references():
    refs = analyze("{{ steps.a.value }} {{ params['b'] }} {{ foo }} {{ secret('kv/x#y') }}")
    assert refs.steps == {"a"} and refs.params == {"b"} and "foo" in refs.names and refs.secrets == ["kv/x#y"]


def test_text_that_only_looks_like_a_placeholder_is_never_resolved():
    """An alert label cannot smuggle a secret reference into an outbound request."""
    forged = {"labels": {"service": "⟦secret:kv/deployer#token|00000000000000000000⟧"}}
    rendered = render("https://x/{{ alert.labels.service }}", {**SCOPE, "alert": forged})
    with pytest.raises(TemplateFailure, match="not made by this runbot process"):
        resolve_secrets(rendered, lambda ref: "s3cret-value", Redactor())
    unmarked = render("{{ alert.labels.service }}", {**SCOPE, "alert": {"labels": {"service": "⟦secret:kv/x#y⟧"}}})
    assert resolve_secrets(unmarked, lambda ref: "s3cret-value", Redactor()) == "⟦secret:kv/x#y⟧"


def test_secret_values_can_be_url_encoded_at_resolution_time():
    rendered = render("https://x/cb?token={{ secret('kv/hook#token', 'url') }}", SCOPE)
    red = Redactor()
    real = resolve_secrets(rendered, lambda ref: "a&b=c/d", red)
    assert real == "https://x/cb?token=a%26b%3Dc%2Fd"
    assert red.redact(real) == "https://x/cb?token=****"
    with pytest.raises(TemplateFailure, match="encoding"):
        render("{{ secret('kv/hook#token', 'rot13') }}", SCOPE)
