"""Canonical identities for the free-credit claim ("one promotional grant per identity").

An identity (a verified phone number, an e-mail address, a hex digest of either...) is
compared in one canonical form, so that spelling it differently never claims a grant twice:

- Unicode NFKC, then trimmed and case-folded (``str.casefold``): full-width digits,
  ``" Alice@Example.COM "`` and ``"alice@example.com"`` are one identity; so is a hex
  digest in upper and lower case.
- A phone number (only digits, spaces and ``+ - . ( ) /``, 7 to 15 digits once ``00``, the
  international call prefix, and a ``(0)`` trunk prefix after the country code are
  removed) becomes E.164: ``+`` and its digits.
  ``+1 (555) 010-9999``, ``001-555-010-9999`` and ``15550109999`` are ``+15550109999``.
  Tollway knows no default country: a national number without its country code
  (``(555) 010-9999``) stays its own digits, ``+5550109999``.
- An e-mail address (one ``@``, a dotted domain) loses the aliases its provider
  documents: Gmail ignores dots in the local part and everything from a ``+``
  (and ``googlemail.com`` is ``gmail.com``); Outlook/Hotmail/Live, iCloud, Fastmail and
  Proton deliver ``name+anything`` to ``name`` (sub-addressing). Other domains keep
  their local part as given (case-folded): their aliasing rules are their own.

`legacy_forms` are the spellings under which claims made before canonical forms existed
were stored (the raw text as given, and trimmed): a grant checks them too, so an old
claim is still recognized when the identity is presented as it was then.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from tollway.limits.store import Store

_PHONE_CHARS = re.compile(r"^\+?[0-9 ()./\-]+$")
_DIGITS = re.compile(r"[0-9]")

# Domain → (dots in the local part ignored, canonical domain). Every domain here delivers
# "name+tag" to "name" (documented by the provider).
_SUBADDRESSING: dict[str, tuple[bool, str]] = {
    "gmail.com": (True, "gmail.com"),
    "googlemail.com": (True, "gmail.com"),
    "outlook.com": (False, "outlook.com"),
    "hotmail.com": (False, "hotmail.com"),
    "live.com": (False, "live.com"),
    "icloud.com": (False, "icloud.com"),
    "me.com": (False, "me.com"),
    "fastmail.com": (False, "fastmail.com"),
    "proton.me": (False, "proton.me"),
    "protonmail.com": (False, "protonmail.com"),
    "pm.me": (False, "pm.me"),
}


def canonical_identity(raw: str) -> str:
    """The canonical form of an identity (see the module docstring). ValueError when
    nothing is left of it."""
    text = unicodedata.normalize("NFKC", raw).strip().casefold()
    if not text:
        raise ValueError("the identity must not be empty")
    phone = _phone(text)
    if phone is not None:
        return phone
    email = _email(text)
    if email is not None:
        return email
    return text


def legacy_forms(raw: str) -> list[str]:
    """Spellings a claim made before canonical identities may be stored under, other
    than the canonical form itself: the text as given, and trimmed."""
    canonical = canonical_identity(raw)
    forms: list[str] = []
    for form in (raw, raw.strip()):
        if form != canonical and form not in forms:
            forms.append(form)
    return forms


def _phone(text: str) -> str | None:
    if not _PHONE_CHARS.match(text):
        return None
    if text.startswith("+"):
        # "+44 (0)20 ...": the (0) is the national trunk prefix, never dialled after +44.
        text = text.replace("(0)", "")
    digits = "".join(_DIGITS.findall(text))
    if not text.startswith("+") and digits.startswith("00"):
        digits = digits[2:]  # 00 is the international call prefix: "0044 20..." is +44 20...
    if not 7 <= len(digits) <= 15:
        return None
    return "+" + digits


def _email(text: str) -> str | None:
    local, at, domain = text.rpartition("@")
    if not at or not local or "@" in local or "." not in domain.strip("."):
        return None
    domain = domain.rstrip(".")
    rule = _SUBADDRESSING.get(domain)
    if rule is None:
        return f"{local}@{domain}"
    ignore_dots, domain = rule
    local = local.split("+", 1)[0]
    if ignore_dots:
        local = local.replace(".", "")
    if not local:
        return None  # "+tag@gmail.com" names no mailbox: keep it as given
    return f"{local}@{domain}"


def _digest(form: str) -> str:
    return hashlib.sha256(form.encode("utf-8", "surrogateescape")).hexdigest()


async def claim(store: Store, raw: str, owner: str) -> str | None:
    """Claim the identity `raw` for `owner` (``"<org> <lot id>"``): the key claimed (to
    give back with `unclaim` when the grant fails), or None when it was claimed before,
    in its canonical form or in a legacy spelling. A legacy claim found is copied to the
    canonical key, so that every later spelling finds it there."""
    keys = store.keys
    canonical = keys.promo_identity(_digest(canonical_identity(raw)))
    client = store.client
    for form in legacy_forms(raw):
        old = await store.call("promo_claim", client.get, keys.promo_identity(_digest(form)))
        if old is not None:
            await store.call("promo_claim", client.set, canonical, old, nx=True)
            return None
    taken = await store.call("promo_claim", client.set, canonical, owner, nx=True)
    return canonical if taken else None
