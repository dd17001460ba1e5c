"""The CA side's data: authorities, templates, certificates, CRLs, archived keys, audit.

DER is stored as issued and parsed lazily into cryptography objects; the columns that are
queried (serial, fingerprint, notAfter, e-mail) are denormalised and indexed. Private keys
never appear here: CA keys live behind keystore.py, archived keys only as CMS
EnvelopedData to the key recovery agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any

from cryptography import x509

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.translation import gettext_lazy as _

from accounts.models import SecondFactorKind
from enrollment.querysets import (
    ENCRYPTING_PURPOSES,
    CertificateAuthorityQuerySet,
    CertificateQuerySet,
    RevocationListQuerySet,
)
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import CertificatePolicy, Generation, Purpose


def validate_key_algorithms(value: object) -> None:
    """A template's algorithms are read on every enrolment: refuse what would fail there."""
    known = {algorithm.value for algorithm in KeyAlgorithm}
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError(_('Give a list of key algorithm names, e.g. ["ec-p256"].'))
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValidationError(
            _("Unknown key algorithm %(unknown)s; known: %(known)s."),
            params={"unknown": ", ".join(unknown), "known": ", ".join(sorted(known))},
        )


class DerCertificateMixin(models.Model):
    """A stored certificate: DER as issued plus the indexed facts we query by."""

    der = models.BinaryField(verbose_name=_("der"))
    serial = models.CharField(
        max_length=42, verbose_name=_("serial"), help_text=_("Lowercase hex, no leading zeros.")
    )
    fingerprint_sha256 = models.CharField(
        max_length=64, unique=True, verbose_name=_("fingerprint sha256")
    )
    subject = models.TextField(verbose_name=_("subject"), help_text=_("RFC 4514 string."))
    not_before = models.DateTimeField(verbose_name=_("not before"))
    not_after = models.DateTimeField(db_index=True, verbose_name=_("not after"))

    class Meta:
        abstract = True

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(bytes(self.der))


# Parsed CA certificates per process, by CA and fingerprint (the DER cannot change under
# it): every issuance reads its issuer's key identifier, constraints and public key, and
# parsing them afresh from a new object cost more than signing. Public data, one entry
# per CA.
_CA_CERTIFICATES: dict[tuple[int, str], x509.Certificate] = {}


class CertificateAuthority(DerCertificateMixin):
    name = models.CharField(max_length=200, verbose_name=_("name"))
    slug = models.SlugField(
        unique=True, verbose_name=_("slug"), help_text=_("Used in /pki/<slug>.crt and .crl URLs.")
    )
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="children",
        verbose_name=_("parent"),
    )
    is_online = models.BooleanField(
        default=True,
        verbose_name=_("is online"),
        help_text=_("Offline CAs (the root) have no key on this server."),
    )
    key_backend = models.CharField(
        max_length=20, default="file", blank=True, verbose_name=_("key backend")
    )
    key_reference = models.CharField(
        max_length=500,
        blank=True,
        verbose_name=_("key reference"),
        help_text=_("Where the key backend finds the key (a file name); never the key itself."),
    )
    # Another CA's issuer, registered by manage.py import_certificates so the certificates
    # it issued before the move can be listed, found and their keys recovered. Never
    # online: no key here, the portal signs, revokes, publishes CRLs and answers OCSP for
    # none of its certificates (the old CA still does).
    is_imported = models.BooleanField(
        default=False,
        verbose_name=_("is imported"),
        help_text=_("Another CA whose certificates were imported; the portal never acts for it."),
    )
    crl_url = models.URLField(
        verbose_name=_("crl url"), help_text=_("This CA's CRL URL, embedded in what it issues.")
    )
    ca_issuers_url = models.URLField(
        verbose_name=_("ca issuers url"), help_text=_("This CA's certificate URL (AIA caIssuers).")
    )
    ocsp_url = models.URLField(
        blank=True,
        verbose_name=_("ocsp url"),
        help_text=_("OCSP responder URL embedded (AIA id-ad-ocsp) in what it issues; empty: none."),
    )
    crl_validity_days = models.PositiveSmallIntegerField(
        default=7, verbose_name=_("crl validity days")
    )
    # Templates that name no CA issue from this one. A flag rather than "the first online
    # issuing CA": a second issuing CA must never take over by the way it sorts, only by
    # services.issuing_ca_switch (switch_issuing_ca, create_issuing_ca --make-default).
    is_default = models.BooleanField(
        default=False,
        verbose_name=_("is default"),
        help_text=_("Templates that name no CA issue from this one (manage.py switch_issuing_ca)."),
    )
    # The last CRL publication that failed, shown by /health/ and cleared by the next success.
    crl_failed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("crl failed at"))
    crl_error_code = models.CharField(max_length=50, blank=True, verbose_name=_("crl error code"))
    crl_error = models.CharField(max_length=500, blank=True, verbose_name=_("crl error"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    objects = CertificateAuthorityQuerySet.as_manager()

    # Not stored: set by directory.pki_views.repository on the instances its page shows.
    issues_now: bool
    current_crl: RevocationList | None
    crl_overdue: bool
    fingerprint_sha1: str
    fingerprint_sha1_colons: str

    class Meta:
        verbose_name = _("certificate authority")
        verbose_name_plural = _("certificate authorities")
        ordering = ["parent_id", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(is_online=False) | ~Q(key_reference=""),
                name="online_ca_has_key_reference",
            ),
            # S/MIME BR 4.9.7: nextUpdate at most 10 days (subscriber CRLs), 12 months (CAs).
            models.CheckConstraint(
                condition=Q(crl_validity_days__gte=1)
                & (Q(crl_validity_days__lte=10) | Q(is_online=False, crl_validity_days__lte=365)),
                name="crl_validity_within_smime_br",
            ),
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="one_default_issuing_ca"
            ),
            models.CheckConstraint(
                condition=Q(is_default=False) | Q(is_online=True, parent__isnull=False),
                name="default_ca_is_an_online_issuing_ca",
            ),
            models.CheckConstraint(
                condition=Q(is_imported=False) | Q(is_online=False, key_reference=""),
                name="imported_ca_is_never_online",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def certificate(self) -> x509.Certificate:
        if self.pk is None:
            return x509.load_der_x509_certificate(bytes(self.der))
        key = (self.pk, self.fingerprint_sha256)
        parsed = _CA_CERTIFICATES.get(key)
        if parsed is None:
            parsed = _CA_CERTIFICATES[key] = x509.load_der_x509_certificate(bytes(self.der))
        return parsed

    @property
    def is_root(self) -> bool:
        """A root of the portal's own hierarchy (an imported CA has no parent here, but
        is none)."""
        return self.parent_id is None and not self.is_imported

    def chain(self) -> list[CertificateAuthority]:
        """This CA and its ancestors, up to and including the root."""
        chain: list[CertificateAuthority] = [self]
        while chain[-1].parent is not None:
            chain.append(chain[-1].parent)
        return chain

    def latest_crl(self) -> RevocationList | None:
        # The DER (~50 MB at a million entries) is read only by those who serve it.
        return self.revocation_lists.newest_first().defer("der").first()

    def crl_overlap(self) -> timedelta:
        """How close to its nextUpdate this online CA's CRL is replaced by the watchdog,
        and called stale by /health/: PKIPORTAL_CRL_OVERLAP_HOURS, unless that is longer
        than this CA's own slack (its CRL validity less the refresh interval). A CA keeps
        the validity it was created with, and the setting is checked against today's
        validity only: with the validity raised since, every CRL of an older CA was born
        inside the overlap, so the watchdog published one at every run and /health/
        failed for ever. Such a CA gets half its slack, as the setting's default is half
        of today's; at least an hour."""
        overlap = settings.PKIPORTAL_CRL_OVERLAP_HOURS
        slack = self.crl_validity_days * 24 - settings.PKIPORTAL_CRL_REFRESH_HOURS
        return timedelta(hours=overlap if overlap <= slack else max(1, slack // 2))


def _key_algorithms_help() -> str:
    """The algorithms field's help, naming every algorithm we support: formatted when
    read, so in the reader's language (a lazy string formatted at import is English)."""
    return _(
        'A list of key algorithms, e.g. ["ec-p256", "rsa-3072"]; empty means all we '
        "support (%(algorithms)s)."
    ) % {"algorithms": ", ".join(a.value for a in KeyAlgorithm)}


APPROVER_GROUP_HELP = _(
    "Who approves or rejects this template's requests. Empty: every RA officer. A group: "
    "only the RA officers in it (and superusers); the other officers see the requests "
    "read-only and are not mailed about them. A group with no active RA officer in it "
    "leaves the requests waiting: the RA console and /health/ warn of it."
)


class CertificateTemplate(models.Model):
    class Purpose(models.TextChoices):
        SIGNING = Purpose.SIGNING.value, _("Signing")
        ENCRYPTION = Purpose.ENCRYPTION.value, _("Encryption")
        DUAL_USE = Purpose.DUAL_USE.value, _("Signing and encryption")

    class Generation(models.TextChoices):
        # Translators: the S/MIME Baseline Requirements' certificate profiles.
        STRICT = Generation.STRICT.value, _("Strict")
        MULTIPURPOSE = Generation.MULTIPURPOSE.value, _("Multipurpose")

    name = models.CharField(max_length=200, unique=True, verbose_name=_("name"))
    slug = models.SlugField(unique=True, verbose_name=_("slug"))
    description = models.TextField(blank=True, verbose_name=_("description"))
    purpose = models.CharField(max_length=20, choices=Purpose.choices, verbose_name=_("purpose"))
    generation = models.CharField(
        max_length=20,
        choices=Generation.choices,
        default=Generation.STRICT,
        verbose_name=_("generation"),
    )
    validity_days = models.PositiveSmallIntegerField(
        default=365,
        verbose_name=_("validity days"),
        help_text=_("At most 825 days (S/MIME BR 6.3.2)."),
    )
    allowed_key_algorithms = models.JSONField(
        default=list,
        blank=True,  # the seeded templates leave it empty, and the admin must save them
        validators=[validate_key_algorithms],
        verbose_name=_("allowed key algorithms"),
        help_text=lazy(_key_algorithms_help, str)(),
    )
    allow_csr = models.BooleanField(
        default=True, verbose_name=_("allow csr"), help_text=_("The requester may bring a CSR.")
    )
    allow_server_key = models.BooleanField(
        default=True,
        verbose_name=_("allow server key"),
        help_text=_("The portal may generate the key and hand out a PKCS#12."),
    )
    archive_key = models.BooleanField(
        default=False,
        verbose_name=_("archive key"),
        help_text=_("Archive the private key to the key recovery agents."),
    )
    requires_approval = models.BooleanField(default=False, verbose_name=_("requires approval"))
    # PROTECT: deleting the group would hand its templates' decisions to every officer.
    approver_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="approver_templates",
        verbose_name=_("approvers"),
        help_text=APPROVER_GROUP_HELP,
    )
    organization_policy_oid = models.CharField(
        max_length=100, blank=True, verbose_name=_("organization policy oid")
    )
    issuing_ca = models.ForeignKey(
        CertificateAuthority,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        limit_choices_to={"is_online": True, "parent__isnull": False},
        verbose_name=_("issuing ca"),
        help_text=_(
            "Empty: the default issuing CA, which manage.py switch_issuing_ca moves to a "
            "successor. Name one only to keep this template on it."
        ),
    )
    allowed_groups = models.ManyToManyField(
        Group,
        blank=True,
        verbose_name=_("allowed groups"),
        help_text=_("Empty: every signed-in employee may enrol."),
    )
    is_active = models.BooleanField(default=True, verbose_name=_("is active"))

    class Meta:
        verbose_name = _("certificate template")
        verbose_name_plural = _("certificate templates")
        ordering = ["name"]
        constraints = [
            # Signing-only keys are never archived (DESIGN.md; S/MIME BR 6.1.1.3).
            models.CheckConstraint(
                condition=~Q(purpose="signing", archive_key=True),
                name="signing_template_never_archives",
            ),
            models.CheckConstraint(
                condition=Q(validity_days__gte=1, validity_days__lte=825),
                name="template_validity_at_most_825_days",
            ),
            # An archived key must be one the portal generated: a CSR's key never reaches us.
            models.CheckConstraint(
                condition=~Q(archive_key=True, allow_csr=True),
                name="archiving_template_takes_no_csr",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def issuing_from(self) -> CertificateAuthority | None:
        """The CA its certificates come from: its own, or the default issuing CA (online
        by constraint); None when there is neither. Issuance finds the default in its own
        statement (hotsql.claim_key); pages, approval and roll-outs ask here."""
        if self.issuing_ca_id is not None:
            return self.issuing_ca
        return CertificateAuthority.objects.filter(is_default=True).first()

    @property
    def key_algorithms(self) -> frozenset[KeyAlgorithm]:
        if not self.allowed_key_algorithms:
            return frozenset(KeyAlgorithm)
        return frozenset(KeyAlgorithm(value) for value in self.allowed_key_algorithms)

    def policy(self) -> CertificatePolicy:
        """The profile it issues under: a frozen value, one kept per set of the fields it
        is made of (made and checked afresh, it was ~0.5 % of an enrolment)."""
        fields = (
            self.purpose,
            self.generation,
            self.validity_days,
            tuple(self.allowed_key_algorithms or ()),
            self.organization_policy_oid or None,
        )
        try:
            return _policy(*fields)
        except TypeError:  # an unhashable entry in the JSON list: refused as ever, below
            return _policy.__wrapped__(*fields)


# typed: validity_days=True or 1.0 (an unsaved, uncleaned template) must reach
# CertificatePolicy's refusal, not the policy kept for 1.
@lru_cache(maxsize=64, typed=True)
def _policy(
    purpose: str,
    generation: str,
    validity_days: int,
    allowed_key_algorithms: tuple[str, ...],
    organization_policy_oid: str | None,
) -> CertificatePolicy:
    return CertificatePolicy(
        purpose=Purpose(purpose),
        generation=Generation(generation),
        validity_days=validity_days,
        allowed_key_algorithms=(
            frozenset(KeyAlgorithm(value) for value in allowed_key_algorithms)
            if allowed_key_algorithms
            else frozenset(KeyAlgorithm)
        ),
        organization_policy_oid=organization_policy_oid,
    )


def _unit_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class OfficerScope(models.Model):
    """Whom the RA officers and key recovery agents of one group act for: the people of
    some organisational units, the members of some groups, or both. An officer in no scope's
    group acts for everyone, as before scopes; one in several acts for all of theirs
    together; a superuser always acts for everyone (enrollment.scopes). Shared mailboxes
    belong to no unit: only officers who act for everyone handle theirs."""

    name = models.CharField(max_length=100, unique=True, verbose_name=_("name"))
    # PROTECT: deleting the group would silently widen its officers to everyone.
    officers = models.ForeignKey(
        Group,
        on_delete=models.PROTECT,
        related_name="officer_scopes",
        verbose_name=_("officers"),
        help_text=_(
            "The group whose RA officers and key recovery agents this scope limits. They "
            "then decide requests, revoke, find certificates and recover keys only of the "
            "people below; superusers are never limited."
        ),
    )
    organizational_units = models.TextField(
        blank=True,
        verbose_name=_("organisational units"),
        help_text=_("One organisational unit per line, as accounts spell it (any case)."),
    )
    people_groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="+",
        verbose_name=_("groups of people"),
        help_text=_("Members of these groups are in the scope too, whatever their unit."),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        ordering = ["name"]
        verbose_name = _("officer scope")
        verbose_name_plural = _("officer scopes")

    def __str__(self) -> str:
        return self.name

    @property
    def units(self) -> list[str]:
        """The units, one per line as typed, blanks dropped."""
        return _unit_lines(self.organizational_units)

    def clean(self) -> None:
        super().clean()
        # One per line, each kept once: the same unit twice (in another case) is a typo.
        seen: dict[str, str] = {}
        for unit in self.units:
            if unit.lower() in seen:
                raise ValidationError(
                    {
                        "organizational_units": ValidationError(
                            _("%(unit)s is listed twice."), params={"unit": repr(unit)}
                        )
                    }
                )
            if len(unit) > 200:
                raise ValidationError(
                    {"organizational_units": _("A unit has at most 200 characters.")}
                )
            seen[unit.lower()] = unit
        self.organizational_units = "\n".join(seen.values())


class KeyIdentity(models.Model):
    """Every key the CAs have certified, and whether it was reported compromised.

    The row is where issuance and a keyCompromise revocation meet: issuance claims it
    (hotsql.claim_key, an upsert that locks it and reads the latest committed flag) and a
    compromise sets the flag under the same lock before it looks for the key's other
    certificates. One waits for the other, so no certificate of a compromised key is
    issued while the compromise commits, nor left valid after it.
    """

    spki_sha256 = models.CharField(max_length=64, primary_key=True, verbose_name=_("spki sha256"))
    compromised = models.BooleanField(default=False, verbose_name=_("compromised"))

    class Meta:
        verbose_name = _("key identity")
        verbose_name_plural = _("key identities")

    def __str__(self) -> str:
        return f"{self.spki_sha256[:16]}…{' (compromised)' if self.compromised else ''}"


class SharedMailbox(models.Model):
    """A functional mailbox of the organisation (finance@, a Poststelle) that several
    people, its delegates, read: certificates can be issued for it, with the organisation
    as their subject (organization-validated, S/MIME BR 7.1.4.2.4), never for a person.

    Its own row rather than an account that cannot sign in: nothing can sign in as it,
    nothing that assumes an account is a person (leavers, address changes, roll-outs,
    LDAP publication per person) reaches it, and its certificates have no owner but this.
    The address never changes (a renamed mailbox is a new one): what certificates certify
    stays what the row says.
    """

    email = models.EmailField(
        max_length=64,
        unique=True,
        verbose_name=_("email"),
        help_text=_("Lower-case; it is the certificates' common name (RFC 5280: at most 64)."),
    )
    display_name = models.CharField(
        max_length=200,
        verbose_name=_("display name"),
        help_text=_("Shown in the portal and the directory, not in certificates."),
    )
    delegates = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="delegated_mailboxes",
        verbose_name=_("delegates"),
    )
    is_active = models.BooleanField(default=True, verbose_name=_("is active"))
    deactivated_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("deactivated at"),
        help_text=_("When it was switched off: its grace period starts."),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("created by"),
    )
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    # Not stored: set by directory.selectors.mailbox_search on the mailboxes it finds.
    directory_certificates: list[Certificate]
    directory_encrypt_to: Certificate | None
    # Not stored either: set by directory.views.search, the reader is one of its delegates.
    directory_delegate: bool

    class Meta:
        ordering = ["email"]
        verbose_name = _("shared mailbox")
        verbose_name_plural = _("shared mailboxes")
        constraints = [
            models.CheckConstraint(
                condition=Q(is_active=True, deactivated_at__isnull=True)
                | Q(is_active=False, deactivated_at__isnull=False),
                name="mailbox_deactivated_at_when_inactive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} <{self.email}>"


class Certificate(DerCertificateMixin):
    class Status(models.TextChoices):
        # Translators: a certificate's status.
        VALID = "valid", _("Valid")
        REVOKED = "revoked", _("Revoked")

    class RevocationReasonChoice(models.TextChoices):
        """RFC 5280 5.3.1 reasons a subscriber certificate may carry. certificateHold is
        never offered; cACompromise names a CA's key, not a subscriber's (a CA's own
        revocation is on its issuer's CRL), and CRL linters refuse it on these entries."""

        # Translators: the revocation reasons (RFC 5280 CRLReason), as officers pick them.
        KEY_COMPROMISE = "keyCompromise", _("Key compromise")
        AFFILIATION_CHANGED = "affiliationChanged", _("Affiliation changed")
        SUPERSEDED = "superseded", _("Superseded")
        CESSATION_OF_OPERATION = "cessationOfOperation", _("Cessation of operation")
        PRIVILEGE_WITHDRAWN = "privilegeWithdrawn", _("Privilege withdrawn")

    # Unique through cert_fingerprint_sha256_uniq, not unique=True: on PostgreSQL that also
    # builds a varchar_pattern_ops twin for LIKE, which no query here uses (fingerprints are
    # looked up whole) and which cost an index entry per issuance, ~0.1 GB per million.
    fingerprint_sha256 = models.CharField(max_length=64, verbose_name=_("fingerprint sha256"))
    ca = models.ForeignKey(
        CertificateAuthority,
        on_delete=models.PROTECT,
        related_name="certificates",
        db_index=False,  # cert_ca_status_idx and unique_serial_per_ca lead with the CA
        verbose_name=_("ca"),
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="certificates",
        db_index=False,  # cert_owner_template_idx leads with the owner
        verbose_name=_("owner"),
    )
    # A shared mailbox's certificate has no owner: its holders are the mailbox's delegates.
    mailbox = models.ForeignKey(
        SharedMailbox,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="certificates",
        db_index=False,  # cert_mailbox_idx: partial, the few rows that have one
        verbose_name=_("mailbox"),
    )
    template = models.ForeignKey(
        CertificateTemplate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        verbose_name=_("template"),
    )
    purpose = models.CharField(
        max_length=20, choices=CertificateTemplate.Purpose.choices, verbose_name=_("purpose")
    )
    # Searched as substrings by the RA console: pg_trgm indexes on PostgreSQL (migration 0007).
    common_name = models.CharField(max_length=200, verbose_name=_("common name"))
    email = models.EmailField(
        blank=True,
        verbose_name=_("email"),
        help_text=_("First rfc822Name, lowercased, for lookups."),
    )
    emails = models.JSONField(
        default=list, verbose_name=_("emails"), help_text=_("Every rfc822Name in subjectAltName.")
    )
    fingerprint_sha1 = models.CharField(
        max_length=40, verbose_name=_("fingerprint sha1"), help_text=_("Outlook shows SHA-1.")
    )
    key_algorithm = models.CharField(
        max_length=30, verbose_name=_("key algorithm"), help_text=_('For people: "RSA 3072".')
    )
    # The key's identity (keys.spki_sha256): a key revoked for keyCompromise is never
    # certified again, and its other certificates are revoked with it (S/MIME BR 6.1.1.3,
    # 4.9.1.1). No index of its own: issuance asks KeyIdentity, and the rare compromise
    # reads the table for the key's other certificates.
    spki_sha256 = models.CharField(max_length=64, editable=False, verbose_name=_("spki sha256"))
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.VALID, verbose_name=_("status")
    )
    revoked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("revoked at"))
    revocation_reason = models.CharField(
        max_length=30,
        blank=True,
        choices=RevocationReasonChoice.choices,
        verbose_name=_("revocation reason"),
        help_text=_("Empty: no reason code (RFC 5280 'unspecified' is never encoded)."),
    )
    invalidity_date = models.DateTimeField(null=True, blank=True, verbose_name=_("invalidity date"))
    # When its CRL entry last became one no CRL lists yet: at the revocation, and again
    # when its reason becomes keyCompromise later. What /health/ and the watchdog measure a
    # revocation's wait for a CRL from; revoked_at stays the revocation's own date, which
    # the entry carries (RFC 5280 5.1.2.6). Empty: never queued here (valid, imported), or
    # by a process older than migration 0034 (then revoked_at stands in for it).
    queued_for_crl_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("queued for crl at")
    )
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    objects = CertificateQuerySet.as_manager()

    # Not stored: set by enrollment.views.certificate_list on the instances it lists.
    open_recovery: KeyRecoveryRequest | None
    outdated_due: datetime | None
    # Not stored: set by directory.selectors.mark_newest on the directory's results.
    newest: bool
    # Not stored: set by directory.selectors.mark_encrypt_to on the directory's results.
    encrypt_to: bool

    class Meta:
        verbose_name = _("certificate")
        verbose_name_plural = _("certificates")
        ordering = ["-not_before"]
        constraints = [
            models.UniqueConstraint(fields=["ca", "serial"], name="unique_serial_per_ca"),
            models.UniqueConstraint(
                fields=["fingerprint_sha256"], name="cert_fingerprint_sha256_uniq"
            ),
            models.CheckConstraint(
                condition=Q(status="valid", revoked_at__isnull=True)
                | Q(status="revoked", revoked_at__isnull=False),
                name="revoked_certificate_has_revocation_time",
            ),
            models.CheckConstraint(
                condition=Q(owner__isnull=True) | Q(mailbox__isnull=True),
                name="certificate_owner_or_mailbox",
            ),
        ]
        indexes = [
            models.Index(fields=["ca", "status"], name="cert_ca_status_idx"),
            # A person's certificates, and the per-template cap checked on every enrolment.
            # With the owner's own index alone, PostgreSQL without fresh statistics ANDed it
            # with the template's, which grows with every certificate of that template.
            models.Index(fields=["owner", "template"], name="cert_owner_template_idx"),
            # A shared mailbox's certificates (its pages, cap, revocation, the directory).
            models.Index(
                fields=["mailbox"], name="cert_mailbox_idx", condition=Q(mailbox__isnull=False)
            ),
            # Revocation and the API look certificates up by serial alone, and the RA console
            # by its first digits too (pattern operators: equality and prefix LIKE).
            models.Index(
                fields=["serial"], name="cert_serial_idx", opclasses=["varchar_pattern_ops"]
            ),
            # The directory's exact-address lookup (addresses are stored lower-case).
            models.Index(fields=["email"], name="cert_email_idx"),
            # Outlook shows SHA-1 thumbprints; officers paste them into the RA console.
            models.Index(fields=["fingerprint_sha1"], name="cert_fingerprint_sha1_idx"),
            # Newest first, the default order: an officer's page of the API list or a broad
            # RA search reads its fifty rows instead of sorting every certificate.
            models.Index(fields=["-not_before", "-id"], name="cert_newest_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.common_name} ({self.serial[:12]}…)"

    @property
    def is_expired(self) -> bool:
        return self.not_after <= timezone.now()

    @property
    def state(self) -> str:
        """valid, revoked or expired: what a person should be told."""
        if self.status == self.Status.REVOKED:
            return "revoked"
        return "expired" if self.is_expired else "valid"

    @property
    def encrypts(self) -> bool:
        """Its key usage lets a sender encrypt to it (RSA keyEncipherment, EC keyAgreement),
        as encryption_capable() filters: purpose is stored from that key usage, at issuance
        and import, so no DER is parsed to tell."""
        return self.purpose in ENCRYPTING_PURPOSES

    @property
    def names_current_address(self) -> bool:
        """It names its holder's address (case aside, as enrollment.outdated compares), or
        none (imported, say: no mailbox to lose); a shared mailbox's address never changes.
        The directory offers no other to encrypt to. Reads the owner, no query once it is
        loaded."""
        owner = self.owner
        if owner is None or not self.email:
            return True
        return self.email == (owner.email or "").strip().lower()

    @property
    def names_old_address(self) -> bool:
        """Held, and its address is no longer its holder's (case aside): it is revoked a
        grace period after the change (enrollment.outdated). Reads the owner, no query
        once it is loaded."""
        if self.status != self.Status.VALID or self.is_expired:
            return False
        return not self.names_current_address


class CertificateRequest(models.Model):
    """One person's request for one certificate, from submission to issuance.

    Holds no key material: a CSR (public) or the algorithm the portal will generate a key
    with once the request may be fulfilled. A failed fulfilment stays visible with its error.
    """

    class State(models.TextChoices):
        # Translators: a request's state.
        PENDING = "pending", _("Waiting for approval")
        APPROVED = "approved", _("Approved: ready to download")
        REJECTED = "rejected", _("Rejected")
        ISSUED = "issued", _("Issued")
        FAILED = "failed", _("Failed")
        WITHDRAWN = "withdrawn", _("Withdrawn")

    class KeySource(models.TextChoices):
        CSR = "csr", _("Your own key (CSR)")
        SERVER = "server", _("Generated by the portal")

    class Channel(models.TextChoices):
        """How the request reached the portal. Every row that exists is made by one of
        these: /enroll/ (personal, shared mailbox, renewal), the REST API (the same three),
        EST (enrollment/est.py) and an officer's roll-out (one approved request per person
        invited). Imported certificates have no request. UNKNOWN is what migration 0033
        could not tell apart (a web request and an API request without an
        Idempotency-Key look alike), and what a row inserted by code that does not name
        the column gets (the database default; request_submit() requires a channel)."""

        WEB = "web", _("Web (/enroll/)")
        API = "api", _("REST API")
        EST = "est", _("EST (RFC 7030)")
        ROLLOUT = "rollout", _("Roll-out invitation")
        UNKNOWN = "unknown", _("Not recorded")

    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="certificate_requests",
        db_index=False,  # request_requester_template_idx leads with the requester
        verbose_name=_("requester"),
    )
    template = models.ForeignKey(
        CertificateTemplate, on_delete=models.PROTECT, verbose_name=_("template")
    )
    # A delegate's request for a shared mailbox: the certificate names the mailbox.
    mailbox = models.ForeignKey(
        SharedMailbox,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="requests",
        db_index=False,  # request_mailbox_idx: partial, the few rows that have one
        verbose_name=_("mailbox"),
    )
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING, verbose_name=_("state")
    )
    key_source = models.CharField(
        max_length=10, choices=KeySource.choices, verbose_name=_("key source")
    )
    csr = models.BinaryField(
        null=True, blank=True, verbose_name=_("csr"), help_text=_("DER; public data only.")
    )
    key_algorithm = models.CharField(max_length=20, blank=True, verbose_name=_("key algorithm"))
    requested_subject = models.TextField(
        blank=True, verbose_name=_("requested subject"), help_text=_("What the CSR asked for.")
    )
    requested_emails = models.JSONField(
        default=list, blank=True, verbose_name=_("requested emails")
    )
    renewal_of = models.ForeignKey(
        "Certificate",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="renewals",
        verbose_name=_("renewal of"),
    )
    certificate = models.OneToOneField(
        "Certificate",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="request",
        verbose_name=_("certificate"),
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="decided_requests",
        verbose_name=_("decided by"),
    )
    decided_at = models.DateTimeField(null=True, blank=True, verbose_name=_("decided at"))
    decision_reason = models.TextField(blank=True, verbose_name=_("decision reason"))
    error_code = models.CharField(max_length=50, blank=True, verbose_name=_("error code"))
    error = models.CharField(max_length=500, blank=True, verbose_name=_("error"))
    source_address = models.GenericIPAddressField(
        null=True, blank=True, verbose_name=_("source address")
    )
    # The API client's Idempotency-Key: a retry with it gets this request's answer again
    # instead of a second certificate. Empty for the web and for clients that send none.
    # EST makes its own, starting "est:" (services.EST_KEY_PREFIX).
    idempotency_key = models.CharField(
        max_length=64, blank=True, default="", editable=False, verbose_name=_("idempotency key")
    )
    # Set once, by whoever makes the row (services.request_submit's callers, roll-outs).
    # The database default too, so that rows a portal still running the code before 0032
    # writes during a deployment say "unknown" rather than fail NOT NULL.
    channel = models.CharField(
        max_length=10,
        choices=Channel.choices,
        default=Channel.UNKNOWN,
        db_default=Channel.UNKNOWN,
        editable=False,
        verbose_name=_("channel"),
    )
    created_at = models.DateTimeField(
        default=timezone.now, db_index=True, verbose_name=_("created at")
    )
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("certificate request")
        verbose_name_plural = _("certificate requests")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "created_at"], name="request_state_idx"),
            # A person's requests, and the open-request and rate limits of every enrolment.
            models.Index(fields=["requester", "template"], name="request_requester_template_idx"),
            # A shared mailbox's open requests (its cap, withdrawal on deactivation).
            models.Index(
                fields=["mailbox"], name="request_mailbox_idx", condition=Q(mailbox__isnull=False)
            ),
            # EST's repeat lookup (est._waiting_with) has, on PostgreSQL only, the partial
            # expression index request_est_csr_idx (requester_id, sha256(csr)) WHERE channel =
            # 'est', made by migration 0033 outside the model state (SQLite has no digest of
            # bytes to index, and scans its small table).
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(key_source="csr", csr__isnull=False)
                | Q(key_source="server", key_algorithm__gt=""),
                name="request_has_csr_or_key_algorithm",
            ),
            models.CheckConstraint(
                condition=~Q(state="issued") | Q(certificate__isnull=False),
                name="issued_request_has_certificate",
            ),
            # A mailbox's key is made by the portal and archived (services.request_submit).
            models.CheckConstraint(
                condition=Q(mailbox__isnull=True) | Q(key_source="server"),
                name="mailbox_request_has_server_key",
            ),
            # One request per key and person: two retries racing each other meet here.
            models.UniqueConstraint(
                fields=["requester", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="request_idempotency_key_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"Request #{self.pk} by {self.requester} for {self.template}"

    @property
    def is_open(self) -> bool:
        return self.state in (self.State.PENDING, self.State.APPROVED)

    @property
    def awaits_download(self) -> bool:
        return self.state == self.State.APPROVED and self.key_source == self.KeySource.SERVER

    @property
    def may_be_withdrawn(self) -> bool:
        """Nothing issued yet and nothing to wait for but an officer or the requester's
        download: the requester may still take it back (request_withdraw)."""
        return self.state == self.State.PENDING or self.awaits_download


# Since when a CRL entry has waited for a CRL, from CrlEntry: its certificate's
# queued_for_crl_at, or revoked_at for one a process older than migration 0034 revoked.
CRL_QUEUED_AT = Coalesce("certificate__queued_for_crl_at", "certificate__revoked_at")


class CrlEntry(models.Model):
    """A revoked certificate's CRL entry, DER-encoded once when the revocation commits.

    Publishing concatenates these bytes instead of building a million objects (see
    enrollment/x509/crl_fast.py). A narrow table of its own, so a CRL reads ~50 bytes per
    entry rather than whole certificate rows. ``first_crl_number`` stays empty until a CRL
    lists the entry: that is what marks a CA's CRL as out of date.
    """

    certificate = models.OneToOneField(
        Certificate,
        primary_key=True,
        on_delete=models.PROTECT,
        related_name="crl_entry",
        verbose_name=_("certificate"),
    )
    ca = models.ForeignKey(
        CertificateAuthority, on_delete=models.PROTECT, related_name="+", verbose_name=_("ca")
    )
    not_after = models.DateTimeField(
        verbose_name=_("not after"), help_text=_("The certificate's; expired entries drop.")
    )
    der = models.BinaryField(
        verbose_name=_("der"), help_text=_("The revokedCertificates element (RFC 5280 5.1.2.6).")
    )
    first_crl_number = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        verbose_name=_("first crl number"),
        help_text=_("The first CRL listing it; empty: not published yet."),
    )

    class Meta:
        verbose_name = _("CRL entry")
        verbose_name_plural = _("CRL entries")
        indexes = [
            models.Index(fields=["ca", "not_after"], name="crl_entry_ca_not_after_idx"),
            models.Index(
                fields=["ca"],
                condition=Q(first_crl_number__isnull=True),
                name="crl_entry_unpublished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"CRL entry of {self.certificate_id}"


# What holders may give when revoking their own certificate (RFC 5280 5.3.1, S/MIME BR
# 4.9.1.1); RA officers may give any RevocationReasonChoice. Web form and API share it.
HOLDER_REVOCATION_REASONS = (
    Certificate.RevocationReasonChoice.KEY_COMPROMISE,
    Certificate.RevocationReasonChoice.AFFILIATION_CHANGED,
    Certificate.RevocationReasonChoice.SUPERSEDED,
    Certificate.RevocationReasonChoice.CESSATION_OF_OPERATION,
)


class RevocationList(models.Model):
    ca = models.ForeignKey(
        CertificateAuthority,
        on_delete=models.PROTECT,
        related_name="revocation_lists",
        verbose_name=_("ca"),
    )
    number = models.PositiveBigIntegerField(verbose_name=_("number"))
    this_update = models.DateTimeField(verbose_name=_("this update"))
    next_update = models.DateTimeField(verbose_name=_("next update"))
    entries = models.PositiveIntegerField(default=0, verbose_name=_("entries"))
    der = models.BinaryField(verbose_name=_("der"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    objects = RevocationListQuerySet.as_manager()

    class Meta:
        verbose_name = _("revocation list")
        verbose_name_plural = _("revocation lists")
        ordering = ["ca", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["ca", "number"], name="unique_crl_number_per_ca"),
            models.CheckConstraint(
                condition=Q(next_update__gt=models.F("this_update")),
                name="crl_next_update_after_this_update",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ca} CRL #{self.number}"

    @cached_property
    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_der_x509_crl(bytes(self.der))


class KeyRecoveryAgent(DerCertificateMixin):
    """A key recovery agent's certificate; its private key never lives on this server."""

    name = models.CharField(max_length=200, verbose_name=_("name"))
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        verbose_name=_("user"),
    )
    is_active = models.BooleanField(default=True, verbose_name=_("is active"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("key recovery agent")
        verbose_name_plural = _("key recovery agents")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ArchivedKey(models.Model):
    """A private key as CMS EnvelopedData to the agents: the server cannot open it alone."""

    certificate = models.OneToOneField(
        Certificate,
        on_delete=models.PROTECT,
        related_name="archived_key",
        verbose_name=_("certificate"),
    )
    envelope = models.BinaryField(
        verbose_name=_("envelope"), help_text=_("DER CMS EnvelopedData of the PKCS#8 key.")
    )
    recipients = models.ManyToManyField(
        KeyRecoveryAgent, related_name="archived_keys", verbose_name=_("recipients")
    )
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("archived key")
        verbose_name_plural = _("archived keys")

    def __str__(self) -> str:
        return f"Archived key of {self.certificate}"


class AppendOnlyQuerySet(models.QuerySet["AuditEvent"]):
    """Bulk updates and deletes are refused: the audit trail only grows."""

    def update(self, **kwargs: Any) -> int:
        raise PermissionDenied("Audit events are append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionDenied("Audit events are append-only.")


class AuditEvent(models.Model):
    """Append-only record of every privileged action."""

    class Outcome(models.TextChoices):
        # Translators: an audit event's outcome.
        SUCCESS = "success", _("Success")
        FAILURE = "failure", _("Failure")

    created_at = models.DateTimeField(
        default=timezone.now, db_index=True, verbose_name=_("created at")
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        verbose_name=_("actor"),
    )
    actor_name = models.CharField(
        max_length=200, verbose_name=_("actor name"), help_text=_("Kept if the account goes.")
    )
    action = models.CharField(max_length=60, db_index=True, verbose_name=_("action"))
    object_type = models.CharField(max_length=60, blank=True, verbose_name=_("object type"))
    object_id = models.CharField(max_length=100, blank=True, verbose_name=_("object id"))
    object_repr = models.CharField(max_length=300, blank=True, verbose_name=_("object repr"))
    outcome = models.CharField(
        max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS, verbose_name=_("outcome")
    )
    source_address = models.GenericIPAddressField(
        null=True, blank=True, verbose_name=_("source address")
    )
    detail = models.JSONField(default=dict, blank=True, verbose_name=_("detail"))
    previous_hash = models.CharField(max_length=64, blank=True, verbose_name=_("previous hash"))
    hash = models.CharField(
        max_length=64,
        blank=True,
        verbose_name=_("hash"),
        help_text=_("SHA-256 over this event and previous_hash."),
    )

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not kwargs.get("force_insert"):
            raise PermissionDenied("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionDenied("Audit events are append-only.")


class AuditChainHead(models.Model):
    """The newest link of the audit hash chain; its row lock serialises appends."""

    last_hash = models.CharField(max_length=64, blank=True, verbose_name=_("last hash"))
    last_event_id = models.BigIntegerField(null=True, blank=True, verbose_name=_("last event id"))

    class Meta:
        verbose_name = _("audit chain head")
        verbose_name_plural = _("audit chain heads")

    def __str__(self) -> str:
        return f"audit chain head at event {self.last_event_id}"


class AuditForwarding(models.Model):
    """How far the audit trail has been forwarded to the SIEM over syslog (one row,
    enrollment.audit_shipping): every event up to ``last_event_id`` went out. A shipper
    locks the row for each batch, so two never send the same events or skip any."""

    last_event_id = models.BigIntegerField(
        default=0,
        verbose_name=_("last event id"),
        help_text=_("The newest event sent; the next run starts after it."),
    )
    last_event_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("last event at"),
        help_text=_("When that event was recorded."),
    )
    succeeded_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("succeeded at"),
        help_text=_("When a run last finished without an error."),
    )
    failed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("failed at"))
    error = models.CharField(
        max_length=500,
        blank=True,
        verbose_name=_("error"),
        help_text=_("The last failure, if any."),
    )

    class Meta:
        verbose_name = _("audit forwarding")
        verbose_name_plural = _("audit forwardings")

    def __str__(self) -> str:
        return f"audit trail forwarded up to event {self.last_event_id}"


# --- key recovery under dual control, expiry notices (issue 6) --------------------------


class KeyRecoveryRequest(models.Model):
    """A request to recover one archived key, from asking or opening to download.

    An officer opens it, or the key's holder asks for it (``asked_by``) and an officer
    accepts it, becoming its opener (``requested_by``): from then on both are alike.
    Between a recovery agent performing it and the named person downloading it, ``bundle``
    holds the recovered key as a PKCS#12 under a one-time password that is never stored;
    the bundle is wiped on download or when the download window closes.
    """

    class State(models.TextChoices):
        REQUESTED = "requested", _("Asked: waiting for an officer to accept it")
        PENDING = "pending", _("Waiting for approval")
        APPROVED = "approved", _("Approved: waiting for a key recovery agent")
        READY = "ready", _("Recovered: waiting for download")
        DOWNLOADED = "downloaded", _("Downloaded")
        EXPIRED = "expired", _("Expired before download")
        REJECTED = "rejected", _("Rejected")
        WITHDRAWN = "withdrawn", _("Withdrawn")

    class Recipient(models.TextChoices):
        OWNER = "owner", _("The key owner")
        REQUESTER = "requester", _("The requesting officer")

    certificate = models.ForeignKey(
        Certificate,
        on_delete=models.PROTECT,
        related_name="recovery_requests",
        verbose_name=_("certificate"),
    )
    # The officer who opened it, or accepted the holder's request: empty only until then.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("requested by"),
    )
    # The key's holder, when they asked for it themselves (README.md, "Key recovery").
    asked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("asked by"),
    )
    accepted_at = models.DateTimeField(null=True, blank=True, verbose_name=_("accepted at"))
    acceptance_note = models.TextField(
        blank=True,
        verbose_name=_("acceptance note"),
        help_text=_("How the accepting officer confirmed the holder's request."),
    )
    reason = models.TextField(verbose_name=_("reason"))
    deliver_to = models.CharField(
        max_length=10, choices=Recipient.choices, verbose_name=_("deliver to")
    )
    pkcs12_format = models.CharField(
        max_length=12,
        choices=[("modern", _("Modern (AES-256)")), ("compatible", _("Compatible (3DES)"))],
        default="modern",
        verbose_name=_("pkcs12 format"),
    )
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING, verbose_name=_("state")
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("decided by"),
    )
    decision_reason = models.TextField(blank=True, verbose_name=_("decision reason"))
    agent = models.ForeignKey(
        KeyRecoveryAgent,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("agent"),
    )
    performed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("performed by"),
    )
    performed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("performed at"))
    bundle = models.BinaryField(
        null=True,
        blank=True,
        editable=False,
        verbose_name=_("bundle"),
        help_text=_("PKCS#12 under a one-time password that is never stored; wiped on download."),
    )
    download_expires_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("download expires at")
    )
    downloaded_at = models.DateTimeField(null=True, blank=True, verbose_name=_("downloaded at"))
    created_at = models.DateTimeField(
        default=timezone.now, db_index=True, verbose_name=_("created at")
    )
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("key recovery request")
        verbose_name_plural = _("key recovery requests")
        ordering = ["-created_at", "-id"]
        constraints = [
            # The recovered key waits only while a download is possible.
            models.CheckConstraint(
                condition=Q(state="ready", bundle__isnull=False, download_expires_at__isnull=False)
                | (~Q(state="ready") & Q(bundle__isnull=True)),
                name="recovery_bundle_only_while_ready",
            ),
            models.UniqueConstraint(
                fields=["certificate"],
                condition=Q(state__in=["requested", "pending", "approved", "ready"]),
                name="one_open_recovery_per_certificate",
            ),
            # Someone asked for it: an officer, or the holder.
            models.CheckConstraint(
                condition=Q(requested_by__isnull=False) | Q(asked_by__isnull=False),
                name="recovery_opened_or_asked",
            ),
            # Past "requested", an officer has opened it (the holder's ask never does).
            models.CheckConstraint(
                condition=Q(requested_by__isnull=False)
                | Q(state__in=["requested", "rejected", "withdrawn"]),
                name="recovery_opened_before_approval",
            ),
            # Dual control: the holder who asks is never the officer who opens it...
            models.CheckConstraint(
                condition=Q(requested_by__isnull=True)
                | Q(asked_by__isnull=True)
                | ~Q(requested_by=F("asked_by")),
                name="recovery_holder_is_not_opener",
            ),
            # ...and what the holder asks for goes to the holder.
            models.CheckConstraint(
                condition=Q(asked_by__isnull=True) | Q(deliver_to="owner"),
                name="recovery_asked_goes_to_owner",
            ),
            models.CheckConstraint(
                condition=~Q(state="withdrawn") | Q(asked_by__isnull=False),
                name="recovery_withdrawn_only_if_asked",
            ),
        ]

    def __str__(self) -> str:
        return f"Key recovery #{self.pk} for {self.certificate}"

    @property
    def state_shown(self) -> str:
        """The state as its approvals count now, where a query annotated quorum_met
        (ra_selectors.with_quorum): an approved recovery whose approver has lost the role
        waits for approval again, as its page and the RA queues say. Else the stored one."""
        return self.state_with_quorum(getattr(self, "quorum_met", None))

    def state_with_quorum(self, met: bool | None) -> str:
        """state_shown's one rule, for a caller that counted the quorum itself (the API's
        answer to a step, recovery.quorum); ``None``: not counted, the stored state."""
        if met is None or self.state not in (self.State.PENDING, self.State.APPROVED):
            return str(self.state)
        return str(self.State.APPROVED if met else self.State.PENDING)

    @property
    def state_shown_display(self) -> str:
        return str(self.State(self.state_shown).label)

    @property
    def is_open(self) -> bool:
        return self.state in (
            self.State.REQUESTED,
            self.State.PENDING,
            self.State.APPROVED,
            self.State.READY,
        )

    @property
    def may_be_withdrawn(self) -> bool:
        """The holder who asked may take it back while nothing has been recovered."""
        return self.asked_by_id is not None and self.state in (
            self.State.REQUESTED,
            self.State.PENDING,
            self.State.APPROVED,
        )

    @property
    def recipient_id(self) -> int | None:
        """The one account that may download the recovered key. A shared mailbox's key
        has no owner: it goes to the delegate who asked for it (recovery_ask)."""
        if self.deliver_to == self.Recipient.OWNER:
            if self.certificate.mailbox_id is not None:
                return self.asked_by_id
            return self.certificate.owner_id
        return self.requested_by_id


class KeyRecoveryApproval(models.Model):
    """One officer's approval of a recovery; the requester's own never exists."""

    request = models.ForeignKey(
        KeyRecoveryRequest,
        on_delete=models.PROTECT,
        related_name="approvals",
        verbose_name=_("request"),
    )
    officer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("officer"),
    )
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("key recovery approval")
        verbose_name_plural = _("key recovery approvals")
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "officer"], name="one_approval_per_officer")
        ]

    def __str__(self) -> str:
        return f"Approval of recovery #{self.request_id} by {self.officer_id}"


class ExpiryNotice(models.Model):
    """An expiry mail sent for one certificate at one threshold: never twice (unique)."""

    certificate = models.ForeignKey(
        Certificate,
        on_delete=models.CASCADE,
        related_name="expiry_notices",
        verbose_name=_("certificate"),
    )
    threshold_days = models.PositiveSmallIntegerField(verbose_name=_("threshold days"))
    sent_at = models.DateTimeField(default=timezone.now, verbose_name=_("sent at"))

    class Meta:
        verbose_name = _("expiry notice")
        verbose_name_plural = _("expiry notices")
        ordering = ["-sent_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["certificate", "threshold_days"], name="one_expiry_notice_per_threshold"
            )
        ]

    def __str__(self) -> str:
        return f"{self.threshold_days}-day notice for {self.certificate_id}"


class ApprovalNoticeDigest(models.Model):
    """One RA officer's notices of requests awaiting approval (ra_notifications): how they
    want them, when the last went, and the requests made since, collected for one summary
    when the window (PKIPORTAL_RA_NOTICE_WINDOW_MINUTES) after it ends.

    In the database, not the cache: a restart loses no collected request, and every web
    process and worker locks the same row, so no summary goes twice. The choice lives on
    the same row so that changing it and collecting a request take the same lock."""

    class Delivery(models.TextChoices):
        # Translators: how an RA officer is mailed about requests awaiting approval.
        SUMMARIES = "summaries", _("Summaries")
        IMMEDIATE = "immediate", _("Every request at once")
        NONE = "none", _("None by mail")

    officer = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name=_("officer"),
    )
    # The database's default too: rows the code before 0040 inserts, until it restarts.
    delivery = models.CharField(
        max_length=10,
        choices=Delivery.choices,
        default=Delivery.SUMMARIES,
        db_default=Delivery.SUMMARIES,
        verbose_name=_("delivery"),
        help_text=_("How the officer hears of requests waiting for their approval."),
    )
    last_sent_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last sent at"))
    # Ids, not a relation: only those still pending when the summary goes are listed, and
    # a list on the officer's own locked row is appended to without another lock.
    waiting = models.JSONField(
        default=list,
        blank=True,
        verbose_name=_("waiting"),
        help_text=_("Requests collected for the next summary."),
    )
    due_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("due at"),
        help_text=_("When the summary goes; empty while none is collected."),
    )

    class Meta:
        verbose_name = _("approval notice digest")
        verbose_name_plural = _("approval notice digests")
        indexes = [
            # Beat's every-minute look for summaries due: the few rows that have one.
            models.Index(
                fields=["due_at"], name="notice_digest_due_idx", condition=Q(due_at__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"Approval notices of officer {self.officer_id}"


class AgentExpiryWarning(models.Model):
    """The admins were warned that the last valid recovery agent certificate expires soon."""

    agent = models.OneToOneField(
        KeyRecoveryAgent,
        on_delete=models.CASCADE,
        related_name="expiry_warning",
        verbose_name=_("agent"),
    )
    sent_at = models.DateTimeField(default=timezone.now, verbose_name=_("sent at"))

    class Meta:
        verbose_name = _("agent expiry warning")
        verbose_name_plural = _("agent expiry warnings")

    def __str__(self) -> str:
        return f"Expiry warning for {self.agent}"


class LeaverRevocationRun(models.Model):
    """The latest run that revoked leavers' certificates (one row, enrollment.leavers).

    Kept so /health/ and the RA console can say, cheaply, that the cap held accounts back
    or that some could not be revoked, until a later run or the command sets it right.
    """

    class Source(models.TextChoices):
        SCHEDULE = "schedule", _("Scheduled (beat)")
        COMMAND = (
            "command",
            "manage.py revoke_deactivated --confirm",
        )  # a command line: not translated

    ran_at = models.DateTimeField(verbose_name=_("ran at"))
    source = models.CharField(max_length=10, choices=Source.choices, verbose_name=_("source"))
    due = models.PositiveIntegerField(
        verbose_name=_("due"), help_text=_("Accounts due for revocation when it ran.")
    )
    cap = models.PositiveIntegerField(
        verbose_name=_("cap"), help_text=_("PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN then.")
    )
    held_back = models.PositiveIntegerField(
        default=0,
        verbose_name=_("held back"),
        help_text=_("Accounts it did not touch because more were due than the cap."),
    )
    revoked_accounts = models.PositiveIntegerField(default=0, verbose_name=_("revoked accounts"))
    revoked_certificates = models.PositiveIntegerField(
        default=0, verbose_name=_("revoked certificates")
    )
    failed_accounts = models.PositiveIntegerField(default=0, verbose_name=_("failed accounts"))
    revoked_mailboxes = models.PositiveIntegerField(
        default=0,
        verbose_name=_("revoked mailboxes"),
        help_text=_("Deactivated shared mailboxes whose certificates it revoked."),
    )
    failed_mailboxes = models.PositiveIntegerField(default=0, verbose_name=_("failed mailboxes"))
    error = models.CharField(
        max_length=500,
        blank=True,
        verbose_name=_("error"),
        help_text=_("The last failure, if any."),
    )

    class Meta:
        verbose_name = _("leaver revocation run")
        verbose_name_plural = _("leaver revocation runs")

    def __str__(self) -> str:
        return f"Leavers' revocation run at {self.ran_at:%Y-%m-%d %H:%M}"


class OutdatedCertificate(models.Model):
    """A held certificate whose address is no longer its holder's, as the hourly run found
    it (enrollment.outdated): when its grace period started and whether the holder was told.

    Found by comparing certificates with accounts rather than recorded by User.save, so an
    address rewritten by QuerySet.update() or SQL is found too. The row goes when the
    certificate is revoked, expires or names its holder's address again.
    """

    certificate = models.OneToOneField(
        Certificate,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="outdated",
        verbose_name=_("certificate"),
    )
    since = models.DateTimeField(
        verbose_name=_("since"), help_text=_("When its grace period started.")
    )
    address = models.CharField(
        max_length=254,
        blank=True,
        verbose_name=_("address"),
        help_text=_("The holder's address when it was found."),
    )
    notified_at = models.DateTimeField(null=True, blank=True, verbose_name=_("notified at"))

    class Meta:
        verbose_name = _("outdated certificate")
        verbose_name_plural = _("outdated certificates")

    def __str__(self) -> str:
        return f"Certificate {self.certificate_id} outdated since {self.since:%Y-%m-%d %H:%M}"


class LdapPublication(models.Model):
    """How publication to the LDAP directory last went (one row, enrollment.ldap_publish).

    Read by /health/ and the RA console: the last error and its time, when the last
    reconciliation run finished, and where the slow full sweep stands.
    """

    succeeded_at = models.DateTimeField(null=True, blank=True, verbose_name=_("succeeded at"))
    failed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("failed at"))
    error = models.CharField(
        max_length=500,
        blank=True,
        verbose_name=_("error"),
        help_text=_("The last failure, if any."),
    )
    reconciled_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("reconciled at"),
        help_text=_("When the last reconciliation run finished."),
    )
    enabled_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("enabled at"),
        help_text=_("When the portal first saw publication turned on."),
    )
    running_until = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("running until"),
        help_text=_("A reconciliation run holds this lease until then."),
    )
    sweep_after = models.BigIntegerField(
        default=0,
        verbose_name=_("sweep after"),
        help_text=_("The full sweep resumes after this account id."),
    )
    swept_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("swept at"),
        help_text=_("When the full sweep last reached the end."),
    )
    settings_digest = models.CharField(
        max_length=64,
        blank=True,
        verbose_name=_("settings digest"),
        help_text=_("What was published where (settings), hashed."),
    )

    class Meta:
        verbose_name = _("ldap publication")
        verbose_name_plural = _("ldap publications")

    def __str__(self) -> str:
        return "LDAP publication"


class LdapPublishedCertificate(models.Model):
    """A certificate the portal last wrote to (or found in) its holder's entry.

    Reconciliation diffs this against what should be published, in SQL, and visits only
    the people whose sets differ: its hourly work follows what changed, not headcount.
    """

    certificate = models.OneToOneField(
        "Certificate",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="ldap_published",
        verbose_name=_("certificate"),
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name=_("owner"),
    )
    published_at = models.DateTimeField(verbose_name=_("published at"))

    class Meta:
        verbose_name = _("ldap published certificate")
        verbose_name_plural = _("ldap published certificates")

    def __str__(self) -> str:
        return f"certificate {self.certificate_id} published for user {self.owner_id}"


class LdapMissingEntry(models.Model):
    """Someone with certificates to publish whose entry the search does not find (one
    row per person, so /health/ counts people, not attempts)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="+",
        verbose_name=_("user"),
    )
    since = models.DateTimeField(verbose_name=_("since"))
    reason = models.CharField(max_length=300, blank=True, verbose_name=_("reason"))

    class Meta:
        verbose_name = _("ldap missing entry")
        verbose_name_plural = _("ldap missing entries")

    def __str__(self) -> str:
        return f"no directory entry for user {self.user_id}"


class LdapSyncRun(models.Model):
    """The latest run of the leavers' sync with the sign-in directory (one row,
    enrollment.ldap_sync).

    Kept so /health/ and the RA console can say, cheaply, that the directory could not be
    read, that the cap held deactivations back, or that a superuser has left, until a
    later run or the command sets it right.
    """

    class Source(models.TextChoices):
        SCHEDULE = "schedule", _("Scheduled (beat)")
        COMMAND = (
            "command",
            "manage.py ldap_sync_leavers --confirm",
        )  # a command line: not translated

    ran_at = models.DateTimeField(verbose_name=_("ran at"))
    source = models.CharField(max_length=10, choices=Source.choices, verbose_name=_("source"))
    checked = models.PositiveIntegerField(
        default=0, verbose_name=_("checked"), help_text=_("Directory accounts looked up.")
    )
    found = models.PositiveIntegerField(
        default=0, verbose_name=_("found"), help_text=_("Of those, found and enabled.")
    )
    gone = models.PositiveIntegerField(
        default=0,
        verbose_name=_("gone"),
        help_text=_("Accounts the directory no longer has, or has disabled."),
    )
    cap = models.PositiveIntegerField(
        verbose_name=_("cap"), help_text=_("PKIPORTAL_LDAP_SYNC_MAX_PER_RUN then.")
    )
    held_back = models.PositiveIntegerField(
        default=0,
        verbose_name=_("held back"),
        help_text=_("Accounts it did not deactivate because more were gone than the cap."),
    )
    deactivated = models.PositiveIntegerField(default=0, verbose_name=_("deactivated"))
    failed = models.PositiveIntegerField(default=0, verbose_name=_("failed"))
    superusers = models.JSONField(
        default=list,
        blank=True,
        verbose_name=_("superusers"),
        help_text=_("User names of superusers the directory no longer has: never deactivated."),
    )
    error = models.CharField(
        max_length=500,
        blank=True,
        verbose_name=_("error"),
        help_text=_("The last failure, if any."),
    )

    class Meta:
        verbose_name = _("ldap sync run")
        verbose_name_plural = _("ldap sync runs")

    def __str__(self) -> str:
        return f"Directory leavers' sync at {self.ran_at:%Y-%m-%d %H:%M}"


# --- background work ------------------------------------------------------------------


class ScheduledRun(models.Model):
    """When a periodic task last finished a run: /health/ tells a stopped beat by it.

    In the database rather than the cache (per process by default) or a file (per host):
    every web process reads the same row, and it survives a Redis restart, which must not
    look like a dead beat. One upsert every few minutes costs nothing.
    """

    name = models.CharField(max_length=100, primary_key=True, verbose_name=_("name"))
    last_run_at = models.DateTimeField(verbose_name=_("last run at"))

    class Meta:
        verbose_name = _("scheduled run")
        verbose_name_plural = _("scheduled runs")

    def __str__(self) -> str:
        return f"{self.name} last ran at {self.last_run_at:%Y-%m-%d %H:%M}"


class BulkRevocationRun(models.Model):
    """A selection confirmed in the admin's "Revoke selected certificates…" and how far it
    has got (enrollment.bulk_revoke). The task's message names only the run: what is left
    is read here, so a run outlives a worker's death or a dropped message and is resumed
    from this row.

    Its key is its ``certificate.bulk_revoke.queued`` audit event's id: the run's number,
    as its later events and /ra/audit/?run= name it, from before this table too.
    """

    class State(models.TextChoices):
        # Translators: a bulk revocation run's state.
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Finished")
        FAILED = "failed", _("Finished with failures")
        STOPPED = "stopped", _("Stopped")

    event = models.OneToOneField(
        AuditEvent,
        primary_key=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("event"),
        help_text=_("Its .queued audit event, whose id is the run's number."),
    )
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("started by"),
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("actor"),
        help_text=_("Whose name the revocations are in: who started it, or last resumed it."),
    )
    source_address = models.GenericIPAddressField(
        null=True, blank=True, verbose_name=_("source address")
    )
    reason = models.CharField(
        max_length=30, choices=Certificate.RevocationReasonChoice.choices, verbose_name=_("reason")
    )
    invalidity_date = models.DateTimeField(null=True, blank=True, verbose_name=_("invalidity date"))
    # A JSON list, not a row per certificate: written once (one insert of ~0.9 MB for
    # 100,000, in the officer's request), read once per task message, never rewritten;
    # each batch updates only the counters below. Emptied when the run finishes with
    # every certificate done (bulk_revoke._end): the counters tell the rest.
    certificate_ids = models.JSONField(
        default=list,
        verbose_name=_("certificate ids"),
        help_text=_("The certificates to revoke, in id order, as confirmed."),
    )
    total = models.PositiveIntegerField(
        verbose_name=_("total"), help_text=_("How many certificate_ids.")
    )
    position = models.PositiveIntegerField(
        default=0,
        verbose_name=_("position"),
        help_text=_("How many of certificate_ids are done: the next batch starts there."),
    )
    selected = models.PositiveIntegerField(
        verbose_name=_("selected"),
        help_text=_(
            "The whole selection, those already revoked or expired when confirmed included."
        ),
    )
    revoked = models.PositiveIntegerField(default=0, verbose_name=_("revoked"))
    skipped = models.PositiveIntegerField(
        default=0,
        verbose_name=_("skipped"),
        help_text=_("Already revoked or expired: when confirmed, and since."),
    )
    failed = models.PositiveIntegerField(default=0, verbose_name=_("failed"))
    imported = models.PositiveIntegerField(
        default=0,
        verbose_name=_("imported"),
        help_text=_("Of those revoked, another CA's: recorded here only."),
    )
    batches = models.PositiveIntegerField(default=0, verbose_name=_("batches"))
    failures = models.JSONField(
        default=list,
        blank=True,
        verbose_name=_("failures"),
        help_text=_("The first few certificates refused, and why."),
    )
    error = models.CharField(
        max_length=500, blank=True, verbose_name=_("error"), help_text=_("Why it stopped early.")
    )
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.QUEUED, verbose_name=_("state")
    )
    claim = models.CharField(
        max_length=64,
        blank=True,
        verbose_name=_("claim"),
        help_text=_("The one task message (its id), or request, that may work on it now."),
    )
    heartbeat_at = models.DateTimeField(
        verbose_name=_("heartbeat at"),
        help_text=_("When it was queued or claimed, or its last batch committed."),
    )
    finished_at = models.DateTimeField(null=True, blank=True, verbose_name=_("finished at"))
    resumes = models.PositiveIntegerField(default=0, verbose_name=_("resumes"))

    class Meta:
        verbose_name = _("bulk revocation run")
        verbose_name_plural = _("bulk revocation runs")
        constraints = [
            models.CheckConstraint(
                condition=Q(position__lte=F("total")), name="bulk_run_position_within"
            ),
        ]

    def __str__(self) -> str:
        return f"Bulk revocation #{self.pk}"

    @property
    def not_reached(self) -> int:
        return self.total - self.position


# --- API tokens -------------------------------------------------------------------------


class ApiToken(models.Model):
    """What the portal keeps about a knox API token besides its hash.

    knox's AuthToken holds the digest, the lookup prefix (``token_key``), the owner and the
    expiry; it has no name and no notion of use. This row, one per token and deleted with
    it, holds the name its owner gave it and when it was last used (to the hour, so the
    token check on every call writes at most once an hour). Pages and audit events name a
    token by this row's id and the token's prefix, never by the digest (knox's primary key).
    """

    auth_token = models.OneToOneField(
        settings.KNOX_TOKEN_MODEL,
        on_delete=models.CASCADE,
        related_name="api_token",
        verbose_name=_("auth token"),
    )
    label = models.CharField(
        max_length=100,
        blank=True,
        verbose_name=_("label"),
        help_text=_("Its owner's name for it; empty for old tokens."),
    )
    last_used_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name=_("last used at"),
        help_text=_("When it last authenticated a call, to the hour."),
    )
    second_factor = models.BooleanField(
        default=False,
        verbose_name=_("second factor"),
        help_text=_(
            "Minted with a confirmed second factor. Tokens without it have no officer, "
            "agent or administrator power while the policy asks their owner for one."
        ),
    )
    # What confirmed that second factor: the attestation policy counts only keys of approved
    # models (accounts.mfa.token_needs_approved_key). Empty on tokens minted before it was
    # recorded, which the policy therefore does not count either.
    second_factor_kind = models.CharField(
        max_length=20,
        blank=True,
        default=SecondFactorKind.NONE,
        choices=SecondFactorKind.choices,
        verbose_name=_("second factor kind"),
        help_text=_(
            "What confirmed the second factor it was minted with; empty: none, or "
            "minted before this was recorded."
        ),
    )
    second_factor_key_model = models.CharField(
        max_length=36,
        blank=True,
        default="",
        verbose_name=_("second factor key model"),
        help_text=_(
            "The AAGUID of the security key it was minted with, when the key proved "
            "its model (attestation)."
        ),
    )

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")

    def __str__(self) -> str:
        return f"{self.label or 'unnamed token'} ({self.auth_token.token_key}…)"

    @property
    def minted_with(self) -> MintedWith:
        return MintedWith(
            second_factor=self.second_factor,
            kind=self.second_factor_kind,
            key_model=self.second_factor_key_model,
        )


@dataclass(frozen=True)
class MintedWith:
    """How an API token was minted, as the role checks read it on every call: from the
    token query's own row (hotsql.tokens_with_user), never a query of their own."""

    second_factor: bool = False
    kind: str = SecondFactorKind.NONE
    key_model: str = ""  # an attested key's AAGUID


# --- roll-outs: many people invited to collect a certificate ---------------------------


class Rollout(models.Model):
    """An RA officer's invitation of many people to collect a certificate of one template.

    Each invited person gets an ordinary CertificateRequest, approved by the officer as it
    is made (RolloutInvitation links the two): collecting, declining and the limits are
    those of any approved portal-key request. ``skipped`` keeps why the people the officer
    named were not invited (at most SKIPPED_KEPT of them; ``skipped_count`` counts all).
    """

    SKIPPED_KEPT = 1000

    class State(models.TextChoices):
        # Translators: a roll-out's state.
        OPEN = "open", _("Open")
        CANCELLED = "cancelled", _("Cancelled")
        EXPIRED = "expired", _("Expired")

    name = models.CharField(max_length=200, blank=True, verbose_name=_("name"))
    template = models.ForeignKey(
        CertificateTemplate,
        on_delete=models.PROTECT,
        related_name="rollouts",
        verbose_name=_("template"),
    )
    key_algorithm = models.CharField(max_length=20, verbose_name=_("key algorithm"))
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("created by"),
    )
    created_at = models.DateTimeField(
        default=timezone.now, db_index=True, verbose_name=_("created at")
    )
    expires_at = models.DateTimeField(
        verbose_name=_("expires at"), help_text=_("Invitations not collected by then expire.")
    )
    group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("group"),
    )
    group_name = models.CharField(
        max_length=150,
        blank=True,
        verbose_name=_("group name"),
        help_text=_("Kept if the group goes."),
    )
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.OPEN, verbose_name=_("state")
    )
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("ended by"),
    )
    ended_at = models.DateTimeField(null=True, blank=True, verbose_name=_("ended at"))
    last_reminded_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("last reminded at")
    )
    invited = models.PositiveIntegerField(default=0, verbose_name=_("invited"))
    skipped = models.JSONField(default=list, blank=True, verbose_name=_("skipped"))
    skipped_count = models.PositiveIntegerField(default=0, verbose_name=_("skipped count"))

    class Meta:
        verbose_name = _("rollout")
        verbose_name_plural = _("rollouts")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "expires_at"], name="rollout_state_expiry_idx")]

    def __str__(self) -> str:
        return f"Roll-out #{self.pk} of {self.template}" + (f" ({self.name})" if self.name else "")

    @property
    def is_open(self) -> bool:
        return self.state == self.State.OPEN


class RolloutInvitation(models.Model):
    """One person's place in a roll-out: their approved request, and how it ended.

    What the person sees and does is their request's; ``ended`` says why an uncollected
    request was withdrawn other than by its requester (who declines by withdrawing it).
    """

    class Ended(models.TextChoices):
        NO = "", _("Not ended")
        CANCELLED = "cancelled", _("Cancelled by an officer")
        EXPIRED = "expired", _("Expired")

    rollout = models.ForeignKey(
        Rollout, on_delete=models.PROTECT, related_name="invitations", verbose_name=_("rollout")
    )
    request = models.OneToOneField(
        CertificateRequest,
        on_delete=models.PROTECT,
        related_name="invitation",
        verbose_name=_("request"),
    )
    mailed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("mailed at"))
    # Sends the mail server refused, and its last answer: the hourly retry stops at
    # rollouts.MAIL_ATTEMPTS, and the roll-out's page shows who was never told.
    mail_attempts = models.PositiveSmallIntegerField(default=0, verbose_name=_("mail attempts"))
    mail_error = models.CharField(
        max_length=300, default="", blank=True, verbose_name=_("mail error")
    )
    reminded_at = models.DateTimeField(null=True, blank=True, verbose_name=_("reminded at"))
    ended = models.CharField(
        max_length=10, choices=Ended.choices, default="", blank=True, verbose_name=_("ended")
    )

    class Meta:
        verbose_name = _("rollout invitation")
        verbose_name_plural = _("rollout invitations")
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Invitation #{self.pk} of roll-out #{self.rollout_id}"

    @property
    def status(self) -> str:
        """invited, collected, declined, cancelled, expired or failed."""
        state = self.request.state
        if state == CertificateRequest.State.ISSUED:
            return "collected"
        if state == CertificateRequest.State.APPROVED:
            return "invited"
        if state == CertificateRequest.State.WITHDRAWN:
            return self.ended or "declined"
        return str(state)
