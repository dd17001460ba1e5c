"""Shapes of the lookup API: one input serializer (shape only), read-only outputs."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from accounts.models import User
from directory.selectors import (
    MAX_CURSOR_LENGTH,
    MAX_PAGE_SIZE,
    MAX_QUERY_LENGTH,
    search_terms,
    to_encrypt_to,
)
from enrollment.models import Certificate, CertificateTemplate
from enrollment.x509 import pkcs7


class LookupIn(serializers.Serializer[None]):
    q = serializers.CharField(
        required=False,
        min_length=1,
        max_length=MAX_QUERY_LENGTH,
        help_text=_(
            "Search people by name, e-mail or unit: case- and accent-insensitive; "
            "terms of three or more characters match anywhere, shorter ones a word's start."
        ),
    )
    email = serializers.EmailField(
        required=False,
        max_length=254,
        help_text=_("Exact address, any case: the certificates to encrypt to it."),
    )
    include_inactive = serializers.BooleanField(
        default=False, help_text=_("With q: also expired and revoked certificates.")
    )
    after = serializers.CharField(
        required=False,
        max_length=MAX_CURSOR_LENGTH,
        help_text=_("With q: the next page, as `next` gives it (an opaque, signed cursor)."),
    )
    limit = serializers.IntegerField(
        default=20, min_value=1, max_value=MAX_PAGE_SIZE, help_text=_("With q: people per page.")
    )

    def validate_q(self, value: str) -> str:
        if not search_terms(value):
            raise serializers.ValidationError(_("Type at least two letters or digits."))
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("q" in attrs) == ("email" in attrs):
            raise serializers.ValidationError(
                {"detail": _("Give either q (search) or email (exact lookup).")}
            )
        return attrs


class OwnerOut(serializers.Serializer[User]):
    name = serializers.CharField(source="get_full_name")
    email = serializers.EmailField()
    organizational_unit = serializers.CharField()


class SharedMailboxOut(serializers.Serializer[Any]):
    email = serializers.EmailField()
    display_name = serializers.CharField()


class DirectoryCertificateOut(serializers.Serializer[Certificate]):
    """A published certificate with its chain: everything a sender needs to encrypt.

    The fields document the shape (OpenAPI); to_representation builds it directly, since
    DRF's per-field machinery costs more than the lookup itself (~40 results per page).
    """

    fingerprint_sha256 = serializers.CharField()
    fingerprint_sha1 = serializers.CharField()
    serial = serializers.CharField(help_text=_("Lower-case hex."))
    subject = serializers.CharField(help_text=_("RFC 4514."))
    common_name = serializers.CharField()
    email = serializers.EmailField()
    emails = serializers.ListField(child=serializers.EmailField())
    purpose = serializers.ChoiceField(choices=CertificateTemplate.Purpose.choices)
    template = serializers.CharField(allow_null=True, help_text=_("The template's slug."))
    key_algorithm = serializers.CharField()
    not_before = serializers.DateTimeField()
    not_after = serializers.DateTimeField()
    state = serializers.ChoiceField(
        choices=["valid", "expired", "revoked"], help_text=_("What to tell a person.")
    )
    revoked_at = serializers.DateTimeField(allow_null=True)
    revocation_reason = serializers.CharField(help_text=_("RFC 5280 reason; empty: none given."))
    owner = OwnerOut(allow_null=True)
    shared_mailbox = SharedMailboxOut(
        allow_null=True, help_text=_("Set for a shared mailbox's certificate (its owner is null).")
    )
    pem = serializers.CharField(help_text=_("The certificate, PEM."))
    chain_pem = serializers.ListField(
        child=serializers.CharField(), help_text=_("Its issuing CA up to the root, PEM.")
    )
    url = serializers.URLField(help_text=_("Its page in the web directory."))
    usable_for_encryption = serializers.BooleanField(
        help_text=_(
            "A sender may encrypt to it: valid now, its key usage allows encryption "
            "(RSA keyEncipherment, EC keyAgreement: purpose encryption or dual_use) and it is for "
            "its holder's current address (for_current_address). False for signing-only "
            "certificates, which mail clients cannot encrypt to, for expired and revoked ones, "
            "and for one naming an address its holder no longer has."
        )
    )
    recommended_for_encryption = serializers.BooleanField(
        help_text=_(
            "The one certificate to encrypt to for its holder (person or shared "
            "mailbox): the newest usable_for_encryption one among the results. At most one per "
            "holder; none when the holder has no certificate to encrypt to."
        )
    )
    for_current_address = serializers.BooleanField(
        help_text=_(
            "It names its holder's current address (owner.email, case aside), or "
            "none. False for one issued before the holder's address changed: it stays valid "
            "for a grace period, to check old signatures, and is then revoked, but mail to its "
            "address no longer reaches the holder, so it is never usable_for_encryption."
        )
    )

    def to_representation(self, instance: Certificate) -> dict[str, Any]:
        owner = instance.owner
        request = self.context.get("request")
        url = reverse("directory:certificate", args=[instance.fingerprint_sha256])
        return {
            "fingerprint_sha256": instance.fingerprint_sha256,
            "fingerprint_sha1": instance.fingerprint_sha1,
            "serial": instance.serial,
            "subject": instance.subject,
            "common_name": instance.common_name,
            "email": instance.email,
            "emails": instance.emails,
            "purpose": instance.purpose,
            "template": instance.template.slug if instance.template else None,
            "key_algorithm": instance.key_algorithm,
            "not_before": _datetime(instance.not_before),
            "not_after": _datetime(instance.not_after),
            "state": instance.state,
            "revoked_at": _datetime(instance.revoked_at) if instance.revoked_at else None,
            "revocation_reason": instance.revocation_reason,
            "owner": None
            if owner is None
            else {
                "name": owner.get_full_name(),
                "email": owner.email,
                "organizational_unit": owner.organizational_unit,
            },
            "shared_mailbox": None
            if instance.mailbox is None  # no query when mailbox_id is None
            else {"email": instance.mailbox.email, "display_name": instance.mailbox.display_name},
            "pem": pkcs7.certificate_pem(instance.certificate).decode("ascii"),
            "chain_pem": self.context["chains"][instance.ca_id],
            "url": request.build_absolute_uri(url) if request is not None else url,
            # The directory's one rule; owners are loaded with the results, no query here.
            "usable_for_encryption": to_encrypt_to(instance),
            # Set by the selectors that list a holder's certificates (mark_encrypt_to).
            "recommended_for_encryption": instance.encrypt_to,
            "for_current_address": instance.names_current_address,
        }


_DATETIME = serializers.DateTimeField()


def _datetime(value: Any) -> str:
    return _DATETIME.to_representation(value)


class LookupOut(serializers.Serializer[dict[str, Any]]):
    next = serializers.URLField(
        allow_null=True, help_text=_("The next page of a search; null on the last one.")
    )
    results = DirectoryCertificateOut(many=True)
