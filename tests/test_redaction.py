"""A registered secret is masked in every common encoding, wherever it appears, also inside larger encoded strings."""

import base64
import json
import urllib.parse

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runbot.redaction import MASK, Matcher, Redactor, RedactorRegistry, base64_cores

SECRET = 'p@ss/w0rd+"quoted"'


def pieces(value: str, n: int = 12) -> list[str]:
    return [value[i : i + n] for i in range(len(value) - n + 1)] or [value]


def test_every_common_encoding_is_masked():
    r = Redactor([SECRET])
    for form in (SECRET, urllib.parse.quote(SECRET, safe=""), urllib.parse.quote_plus(SECRET),
                 base64.b64encode(SECRET.encode()).decode(), json.dumps(SECRET)[1:-1]):  # fmt: skip
        assert r.redact(f"before {form} after") == "before **** after", form


def test_nested_objects_are_masked_and_short_values_are_not_treated_as_secrets():
    r = Redactor([SECRET, "ab"])
    assert r.redact_obj({"k": [SECRET, {"x": f"a{SECRET}b"}]}) == {"k": ["****", {"x": "a****b"}]}
    assert r.redact("about") == "about"


# ---- inside larger encoded strings ----------------------------------------------------------------------


def test_an_echoed_basic_auth_header_is_masked_at_every_alignment():
    r = Redactor([SECRET])
    for user in ("", "u", "us", "ops", "deploy-bot"):  # every offset mod 3
        token = base64.b64encode(f"{user}:{SECRET}".encode()).decode()
        shown = r.redact(f"Authorization: Basic {token}")
        assert shown.startswith("Authorization: Basic ") and MASK in shown
        for core in base64_cores(SECRET.encode()):
            assert core not in shown


def test_base64url_and_unpadded_base64_of_a_larger_string_are_masked():
    r = Redactor([SECRET])
    for enc in (base64.urlsafe_b64encode, base64.b64encode):
        token = enc(f'{{"user":"ops","pw":"{SECRET}","n":1}}'.encode()).decode().rstrip("=")
        assert MASK in r.redact(f"jwt={token}.sig")


def test_hex_of_a_larger_string_is_masked():
    r = Redactor([SECRET])
    for text in (("xx" + SECRET).encode().hex(), ("x" + SECRET + "y").encode().hex().upper()):
        assert MASK in r.redact(f"dump {text} end")


def test_a_secret_percent_encoded_by_any_client_is_masked():
    """Clients differ in what they escape; the run is decoded, so no fixed escaping rule is needed."""
    r = Redactor([SECRET])
    url = httpx.URL("http://h/x", params={"other": "1", "key": SECRET})
    for text in (str(url), "q=" + urllib.parse.quote("pre" + SECRET + "post", safe="@/\"+"),
                 "q=" + urllib.parse.quote(urllib.parse.quote(SECRET, safe=""), safe="")):  # fmt: skip
        shown = r.redact(text)
        assert MASK in shown and "w0rd" not in shown and "w0rd" not in urllib.parse.unquote(shown), text


def test_bytes_are_masked_before_they_are_encoded():
    r = Redactor(["sécret-value-1"])
    data = b"\xff\xfe" + "sécret-value-1".encode() + b"\x00"
    assert r.redact_bytes(data) == b"\xff\xfe****\x00"
    assert r.redact_obj({"b": data}) == {"b": b"\xff\xfe****\x00"}


def test_argv_is_masked_element_by_element():
    spaced = "it's  \"a\"\t\tsecret"
    r = Redactor([spaced])
    assert r.redact_argv(["/bin/tool", f"--password={spaced}", "-v"]) == ["/bin/tool", "--password=****", "-v"]


# ---- generated secrets and surroundings -------------------------------------------------------------


SECRETS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=12, max_size=40).filter(
    lambda s: len(s.strip()) >= 12
)
AROUND = st.text("abc XYZ-_:/=&\n\t", max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=SECRETS, before=AROUND, after=AROUND)
def test_generated_secrets_never_show_in_any_form(secret: str, before: str, after: str) -> None:
    r = Redactor([secret])
    raw = (before + secret + after).encode()
    texts = {
        "raw": before + secret + after,
        "json": json.dumps(before + secret + after),
        "url": urllib.parse.quote(before + secret + after, safe=""),
        "url_plus": urllib.parse.urlencode({"k": before + secret + after}),
        "b64": base64.b64encode(raw).decode(),
        "b64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
    }
    for name, text in texts.items():
        shown = r.redact(f"[{text}]")
        assert MASK in shown, name
        for piece in pieces(secret):
            assert piece not in shown, (name, piece)
        if name in ("b64", "b64url"):
            for core in base64_cores(secret.encode()):
                assert core not in shown and core.translate(str.maketrans("+/", "-_")) not in shown, name
    masked_bytes = r.redact_bytes(b"\x80" + raw + b"\xff")
    for piece in pieces(secret):
        assert piece.encode() not in masked_bytes


@settings(max_examples=60, deadline=None)
@given(secret=SECRETS, cut=st.integers(min_value=1, max_value=11))
def test_masking_before_cutting_never_leaves_a_piece(secret: str, cut: int) -> None:
    """Cutting after masking may cut the mask, never the secret."""
    r = Redactor([secret])
    line = "x" * 100 + secret + "y" * 100
    shown = r.redact(line)[: 100 + cut]
    assert secret[:cut] not in shown[100:] or shown[100:].startswith("*")


# ---- one matcher for every secret -------------------------------------------------------------------


def test_the_registry_masks_every_live_run_in_one_matcher():
    reg = RedactorRegistry()
    for i in range(300):
        reg.for_run(f"run{i}").register(f"secret-value-{i:04d}")
    assert reg.redact("a secret-value-0007 and secret-value-0299") == "a **** and ****"
    reg.global_redactor.register("global-token-abc")
    assert reg.redact("global-token-abc") == MASK


def test_the_registry_sheds_the_words_of_finished_runs():
    reg = RedactorRegistry()
    for i in range(400):
        reg.for_run(f"run{i}").register(f"secret-value-{i:04d}")
    reg.redact("warm")
    for i in range(400):
        reg.drop(f"run{i}")
    reg.for_run("new").register("fresh-secret-42")
    assert reg.redact("fresh-secret-42") == MASK
    assert len(reg._all) < 300  # of ~2,400: the finished runs' words were rebuilt away (a few stay, stale)


def test_the_matcher_keeps_few_levels_as_it_grows():
    m = Matcher()
    for i in range(2000):
        m.add({f"word-{i:05d}": 0})
        if i % 7 == 0:
            m.automatons()
    autos = m.automatons()
    assert len(autos) <= 8
    assert sum(1 for a in autos for _ in a.iter("x word-01999 word-00000 y")) == 2


def test_a_long_run_with_a_stray_percent_is_scanned_in_linear_time():
    """No backtracking regex over long runs: 200,000 URL characters and a '%' take milliseconds, not minutes."""
    import time

    r = Redactor([SECRET])
    t0 = time.perf_counter()
    assert r.redact("a" * 200_000 + "%zz") == "a" * 200_000 + "%zz"
    assert time.perf_counter() - t0 < 5.0  # quadratic scanning took ~8 s for 20,000 characters
