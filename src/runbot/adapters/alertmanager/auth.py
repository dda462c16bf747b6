"""Webhook and API credentials as Alertmanager's http_config sends them: bearer token or basic auth.

Every configured credential is compared (in constant time) on every request, so timing reveals neither
which credential nearly matched nor how many are configured beyond the loop length.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from runbot.settings import Settings

ANY_RECEIVER = "*"


@dataclass(frozen=True)
class Credential:
    receiver: str  # ANY_RECEIVER, or the one Alertmanager receiver name this credential may post as
    token: bytes | None = None
    username: bytes | None = None
    password: bytes | None = None


def _b(value: str | None) -> bytes | None:
    return value.encode() if value else None


def webhook_credentials(settings: Settings) -> list[Credential]:
    creds: list[Credential] = []
    s = settings
    if s.alertmanager_webhook_token is not None:
        creds.append(Credential(ANY_RECEIVER, token=_b(s.alertmanager_webhook_token.get_secret_value())))
    if s.alertmanager_webhook_username and s.alertmanager_webhook_password is not None:
        creds.append(Credential(ANY_RECEIVER, username=_b(s.alertmanager_webhook_username),
                                password=_b(s.alertmanager_webhook_password.get_secret_value())))  # fmt: skip
    for name, c in s.alertmanager_webhook_receivers.items():
        if c.token is not None:
            creds.append(Credential(name, token=_b(c.token.get_secret_value())))
        if c.username and c.password is not None:
            creds.append(Credential(name, username=_b(c.username), password=_b(c.password.get_secret_value())))
    return [c for c in creds if c.token or (c.username and c.password)]


def _eq(a: bytes | None, b: bytes | None) -> bool:
    if a is None or b is None:
        hmac.compare_digest(b"x", b"y")  # keep the work similar on both paths
        return False
    return hmac.compare_digest(a, b)


def parse_authorization(header: str | None) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    """(bearer token, (user, password)) from an Authorization header; either may be None."""
    if not header:
        return None, None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value.encode(), None
    if scheme.lower() == "basic" and value:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None, None
        user, sep, password = raw.partition(b":")
        if sep:
            return None, (user, password)
    return None, None


def authenticate(creds: list[Credential], header: str | None) -> Credential | None:
    """The credential this Authorization header proves, or None."""
    token, basic = parse_authorization(header)
    found: Credential | None = None
    for c in creds:
        ok = False
        if c.token is not None:
            ok = _eq(token, c.token)
        elif c.username is not None:
            user_ok = _eq(basic[0] if basic else None, c.username)
            pass_ok = _eq(basic[1] if basic else None, c.password)
            ok = user_ok and pass_ok
        if ok and found is None:
            found = c
    return found


def bearer_ok(expected: str | None, header: str | None) -> bool:
    """API token check (constant time); False when no token is configured."""
    token, _ = parse_authorization(header)
    if not expected:
        return False
    return _eq(token, expected.encode())
