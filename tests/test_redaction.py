"""A registered secret is masked in every common encoding, wherever it appears."""

import base64
import json
import urllib.parse

from runbot.redaction import Redactor

SECRET = 'p@ss/w0rd+"quoted"'


def test_every_common_encoding_is_masked():
    r = Redactor([SECRET])
    for form in (SECRET, urllib.parse.quote(SECRET, safe=""), urllib.parse.quote_plus(SECRET),
                 base64.b64encode(SECRET.encode()).decode(), json.dumps(SECRET)[1:-1]):
        assert r.redact(f"before {form} after") == "before **** after", form


def test_nested_objects_are_masked_and_short_values_are_not_treated_as_secrets():
    r = Redactor([SECRET, "ab"])
    assert r.redact_obj({"k": [SECRET, {"x": f"a{SECRET}b"}]}) == {"k": ["****", {"x": "a****b"}]}
    assert r.redact("about") == "about"
