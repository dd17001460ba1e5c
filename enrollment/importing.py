"""Bringing in the S/MIME certificates another CA issued (manage.py import_certificates).

An organisation moving from Windows Certificate Services, EJBCA or openssl scripts has
certificates in use: colleagues must keep finding them, holders must be reminded before
they expire and renew into a portal template, and their archived encryption keys must stay
recoverable. The old issuer is registered as a CertificateAuthority with ``is_imported``:
never online, no key, so the portal never signs, lists on a CRL or answers OCSP for what
it issued (a revocation is only recorded here, services._revoke). Each certificate is
checked against it, and against the old CA's CRLs given with --crl, and linked to the one
active account or active shared mailbox its subjectAltName addresses lead to.

Every write (a CA, a certificate, an archived key) is in its own transaction with its
audit event; the run ends with a summary event. Fingerprints make a second run import
nothing twice. A dry run reads only.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from enrollment import hotsql, ldap_publish, services
from enrollment.audit import audit_record
from enrollment.exceptions import ConfigurationError, EnrollmentError
from enrollment.models import (
    ArchivedKey,
    Certificate,
    CertificateAuthority,
    KeyIdentity,
    KeyRecoveryAgent,
    SharedMailbox,
)
from enrollment.x509 import keys, pkcs7, pkcs12
from enrollment.x509.errors import X509Error
from enrollment.x509.importing import (
    Revocation,
    Verdict,
    ascii_lower,
    check_issuer_certificate,
    classify,
    crl_revocations,
    crl_signer,
    email_addresses,
    issued_by,
    load_certificates,
    load_crl,
    purpose,
)

logger = logging.getLogger(__name__)

# The summary's categories, in the order the command prints them.
IMPORTED = "imported"
PRESENT = "already present"
NO_ACCOUNT = "no matching account"
SEVERAL_HOLDERS = "several holders"
BAD_SIGNATURE = "bad signature"
NOT_SMIME = "not S/MIME"
BAD_ADDRESS = "unsafe address"
EXPIRED = "expired"
NO_ISSUER = "issuer not given"
UNREADABLE = "unreadable file"
DUPLICATE_SERIAL = "duplicate serial"
COMPROMISED = "key compromised"
IMPORTED_REVOKED = "imported as revoked"
REVOKED_SKIPPED = "revoked (skipped)"
REFUSED = "refused"
RECORDED_REVOKED = "present, now recorded revoked"
CATEGORIES = (IMPORTED, IMPORTED_REVOKED, PRESENT, RECORDED_REVOKED, NO_ACCOUNT,
              SEVERAL_HOLDERS, BAD_SIGNATURE, NOT_SMIME, BAD_ADDRESS, EXPIRED, NO_ISSUER,
              UNREADABLE, DUPLICATE_SERIAL, COMPROMISED, REVOKED_SKIPPED, REFUSED)  # fmt: skip

KEY_ARCHIVED = "archived"
KEY_PRESENT = "already archived"
KEY_NO_CERTIFICATE = "no imported certificate"
KEY_SIGNING_ONLY = "signing-only (never archived)"
KEY_UNREADABLE = "unreadable or wrong password"
KEY_SEVERAL_HOLDERS = "several holders (archived for none)"
KEY_CATEGORIES = (KEY_ARCHIVED, KEY_PRESENT, KEY_NO_CERTIFICATE, KEY_SIGNING_ONLY,
                  KEY_UNREADABLE, KEY_SEVERAL_HOLDERS)  # fmt: skip

NO_AGENT = (
    "No valid key recovery agent is registered (manage.py register_kra): keys are only "
    "archived to agents, so none can be."
)

_VERDICTS = {
    Verdict.BAD_SIGNATURE: BAD_SIGNATURE,
    Verdict.NOT_SMIME: NOT_SMIME,
    Verdict.BAD_ADDRESS: BAD_ADDRESS,
    Verdict.EXPIRED: EXPIRED,
    Verdict.NO_ISSUER: NO_ISSUER,
}


@dataclass
class ImportReport:
    """What a run did (or, dry, would do): counts and one line per certificate or key."""

    dry_run: bool
    issuers: list[str] = field(default_factory=list)
    crls: list[str] = field(default_factory=list)
    crls_refused: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    key_counts: Counter[str] = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def note(self, category: str, where: str, text: str) -> None:
        self.counts[category] += 1
        self.lines.append(f"{where}: {category}: {text}")

    def note_key(self, category: str, where: str, text: str) -> None:
        self.key_counts[category] += 1
        self.lines.append(f"{where}: key {category}: {text}")


@dataclass(frozen=True)
class Source:
    """One input file's name (for the report) and content."""

    name: str
    data: bytes


# --- the old issuers ----------------------------------------------------------------------


def _issuer_name(certificate: x509.Certificate) -> str:
    common = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    text = str(common[0].value) if common else certificate.subject.rfc4514_string()
    return text[:200]


def _issuer_slug(certificate: x509.Certificate, fingerprint: str) -> str:
    base = slugify(_issuer_name(certificate))[:30].strip("-") or "ca"
    return f"imported-{base}-{fingerprint[:8]}"


def _issuer_ca(
    certificate: x509.Certificate, *, dry_run: bool
) -> tuple[CertificateAuthority | None, bool]:
    """The imported CA row for this issuer certificate (made unless dry): (row, new)."""
    fingerprint = pkcs7.fingerprint(certificate, "sha256")
    existing = CertificateAuthority.objects.filter(fingerprint_sha256=fingerprint).first()
    if existing is not None:
        if not existing.is_imported:
            raise X509Error(
                f"{existing.name} is one of the portal's own CAs: its certificates were "
                "issued here, there is nothing to import."
            )
        return existing, False
    if dry_run:
        return None, True
    try:
        return _issuer_create(certificate, fingerprint), True
    except IntegrityError:  # another run registered it meanwhile
        return CertificateAuthority.objects.get(fingerprint_sha256=fingerprint), False


def _issuer_create(certificate: x509.Certificate, fingerprint: str) -> CertificateAuthority:
    with transaction.atomic():
        ca = CertificateAuthority.objects.create(
            name=_issuer_name(certificate),
            slug=_issuer_slug(certificate, fingerprint),
            is_online=False,
            is_imported=True,
            key_backend="",
            key_reference="",
            crl_url="",
            ca_issuers_url="",
            crl_validity_days=365,
            **services._der_facts(certificate),
        )
        audit_record(
            action="ca.import",
            target=ca,
            detail={"subject": ca.subject, "fingerprint": fingerprint},
        )
    return ca


def _link_parents(authorities: Sequence[CertificateAuthority]) -> None:
    """An imported issuing CA whose imported root was given too gets it as its parent, so
    the chain a holder downloads reaches the old root. Each link is audited; a CA is never
    made the parent of its own parent (cross-certified pairs would loop)."""
    for ca in authorities:
        if ca.parent_id is not None:
            continue
        for other in authorities:
            if other.pk == ca.pk or other.parent_id == ca.pk:
                continue
            if issued_by(ca.certificate, other.certificate):
                with transaction.atomic():
                    CertificateAuthority.objects.filter(pk=ca.pk, parent__isnull=True).update(
                        parent=other
                    )
                    audit_record(
                        action="ca.import_link",
                        target=ca,
                        detail={
                            "issuer": other.fingerprint_sha256,
                            "fingerprint": ca.fingerprint_sha256,
                        },
                    )
                ca.parent = other
                break


# --- holders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    owner: User | None
    mailbox: SharedMailbox | None
    address: str


def _same(stored: str, address: str) -> bool:
    """A stored address is this (plain ASCII, lower-cased) one, ASCII case aside only."""
    return ascii_lower(stored.strip()) == address


def _holder_of(address: str) -> Holder | str | None:
    """Who has this (plain ASCII, lower-cased) address: the active shared mailbox, else
    the one active account; why not if several accounts have it; None if nobody does."""
    mailbox = next(
        (
            m
            for m in SharedMailbox.objects.filter(email__iexact=address, is_active=True)
            if _same(m.email, address)
        ),
        None,
    )
    if mailbox is not None:
        return Holder(None, mailbox, address)
    accounts = [
        a
        for a in get_user_model().objects.filter(email__iexact=address, is_active=True)[:20]
        if _same(a.email, address)
    ]
    if len(accounts) > 1:
        return f"several active accounts have {address}"
    return Holder(accounts[0], None, address) if accounts else None


def _holder(addresses: Iterable[str]) -> tuple[Holder | None, str, str]:
    """The one holder the certificate's addresses lead to (ASCII case aside), with the
    first address that does: (holder, "", ""), or (None, category, why).

    Each address leads to the active shared mailbox that has it, else to the one active
    account that has it (a mailbox before a person, as issuance never certifies a person
    for a mailbox's address). Addresses nobody here has are ignored; addresses that lead
    to different holders, or one that several accounts have, refuse the certificate: it
    would otherwise be attached to whichever address came first.

    The addresses are plain ASCII (classify refuses others). The database's case-blind
    match (UPPER, which folds LONG S into S) only narrows the candidates; each is then
    compared ASCII-lower-cased, exactly."""
    addresses = [ascii_lower(address) for address in addresses]
    found: list[Holder] = []
    for address in addresses:
        holder = _holder_of(address)
        if isinstance(holder, str):
            return None, SEVERAL_HOLDERS, holder
        if holder is not None and not any(_same_holder(holder, h) for h in found):
            found.append(holder)
    if len(found) > 1:
        named = ", ".join(f"{h.address} is {_holder_name(h)}" for h in found)
        return None, SEVERAL_HOLDERS, f"its addresses lead to more than one holder: {named}"
    if found:
        return found[0], "", ""
    return None, NO_ACCOUNT, "no active account or shared mailbox has " + ", ".join(addresses)


def _same_holder(one: Holder, other: Holder) -> bool:
    if one.mailbox is not None or other.mailbox is not None:
        return one.mailbox == other.mailbox
    return one.owner == other.owner


def _holder_name(holder: Holder) -> str:
    if holder.mailbox is not None:
        return f"the shared mailbox {holder.mailbox.email}"
    assert holder.owner is not None
    return f"account {holder.owner.get_username()}"


# --- the certificates -------------------------------------------------------------------


def _readable(
    sources: Iterable[Source], report: ImportReport
) -> list[tuple[str, x509.Certificate]]:
    found: list[tuple[str, x509.Certificate]] = []
    for source in sources:
        try:
            certificates = load_certificates(source.data)
        except X509Error as exc:
            report.note(UNREADABLE, source.name, exc.message)
            continue
        for index, certificate in enumerate(certificates):
            where = source.name if len(certificates) == 1 else f"{source.name}[{index + 1}]"
            if isinstance(certificate, X509Error):
                report.note(UNREADABLE, where, certificate.message)
            else:
                found.append((where, certificate))
    return found


class _KeyCompromised(Exception):
    """The certificate's key was reported compromised: it is not brought in."""


def _import_one(
    certificate: x509.Certificate,
    *,
    ca: CertificateAuthority,
    holder: Holder,
    fingerprint: str,
    revocation: Revocation | None = None,
) -> Certificate:
    addresses = email_addresses(certificate)
    common = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    public_key = certificate.public_key()
    spki = keys.spki_sha256(public_key)  # type: ignore[arg-type]
    with transaction.atomic():
        # Claim the key as issuance does: its row stays locked until this commits, so a
        # keyCompromise of the same key waits and then finds this certificate (and
        # services._revoke_same_key records it revoked); one committed first refuses it.
        compromised, _ca = hotsql.claim_key(spki)
        if compromised:
            raise _KeyCompromised
        if revocation is not None and revocation.reason == "keyCompromise":
            # The key's certificates this revokes with it, before the audit chain's head
            # (services.lock_in_order).
            services.lock_in_order(
                Certificate.objects.filter(spki_sha256=spki, status=Certificate.Status.VALID)
            )
        row = Certificate.objects.create(
            ca=ca,
            owner=holder.owner,
            mailbox=holder.mailbox,
            template=None,
            purpose=purpose(certificate),
            common_name=(str(common[0].value) if common else holder.address)[:200],
            # The address it was matched by: what the directory looks it up by.
            email=holder.address,
            emails=addresses,
            fingerprint_sha1=pkcs7.fingerprint(certificate, "sha1"),
            key_algorithm=keys.describe_public_key(public_key),
            spki_sha256=spki,
            **services._der_facts(certificate),
            **_revoked_fields(revocation),
        )
        audit_record(
            action="certificate.import",
            target=row,
            detail={
                "issuer": ca.name,
                "issuer_fingerprint": ca.fingerprint_sha256,
                "serial": row.serial,
                "fingerprint": fingerprint,
                **(
                    {"mailbox": holder.mailbox.email}
                    if holder.mailbox is not None
                    else {"owner": holder.owner.get_username() if holder.owner else ""}
                ),
                **(
                    {"revoked_at": row.revoked_at.isoformat(), "crl_reason": revocation.reason}
                    if revocation is not None and row.revoked_at is not None
                    else {}
                ),
            },
        )
        if row.revocation_reason == Certificate.RevocationReasonChoice.KEY_COMPROMISE:
            _compromised(row)
        ldap_publish.publish_on_commit(row.owner_id)
    return row


def _revoked_fields(revocation: Revocation | None) -> dict[str, object]:
    """A certificate the old CA's CRL lists: revoked as it says (its date and reason)."""
    if revocation is None:
        return {}
    reason = revocation.reason
    invalidity = revocation.invalidity_date
    return {
        "status": Certificate.Status.REVOKED,
        "revoked_at": revocation.revoked_at,
        # A reason the portal does not keep (certificateHold, say): revoked, no reason.
        "revocation_reason": reason if reason in Certificate.RevocationReasonChoice.values else "",
        "invalidity_date": invalidity if invalidity and invalidity <= timezone.now() else None,
    }


def _compromised(row: Certificate) -> None:
    """The old CA revoked it for keyCompromise: the key is never certified here again, and
    its other certificates are revoked with it (or, imported, recorded revoked)."""
    from enrollment.notifications import certificate_revoked

    KeyIdentity.objects.filter(spki_sha256=row.spki_sha256).update(compromised=True)
    for other in services._revoke_same_key(
        row, actor=None, invalidity_date=row.invalidity_date, source_address=None
    ):
        certificate_revoked(other)


def _record_revoked(
    row: Certificate, revocation: Revocation, where: str, report: ImportReport
) -> None:
    """An imported certificate, still valid here, that the old CA's CRL now lists."""
    if report.dry_run:
        report.note(RECORDED_REVOKED, where, f"the old CA's CRL lists it{_how(revocation)}")
        return
    fields = _revoked_fields(revocation)
    try:
        with transaction.atomic():
            if fields["revocation_reason"] == Certificate.RevocationReasonChoice.KEY_COMPROMISE:
                KeyIdentity.objects.update_or_create(
                    spki_sha256=row.spki_sha256, defaults={"compromised": True}
                )
                services.lock_in_order(  # before the audit chain's head, as a revocation
                    Certificate.objects.filter(
                        Q(pk=row.pk)
                        | Q(spki_sha256=row.spki_sha256, status=Certificate.Status.VALID)
                    )
                )
            revoked = services._revoke(
                certificate=row,
                reason=str(fields["revocation_reason"]) or None,
                actor=None,
                invalidity_date=fields["invalidity_date"],  # type: ignore[arg-type]
                source_address=None,
                revoked_at=revocation.revoked_at,
                detail={"source": "import crl", "crl_reason": revocation.reason},
            )
            if revoked.revocation_reason == Certificate.RevocationReasonChoice.KEY_COMPROMISE:
                _compromised(revoked)
    except EnrollmentError as exc:  # revoked meanwhile, or an invalidity date refused
        report.note(REFUSED, where, f"could not record its revocation: {exc.message}")
        return
    report.note(RECORDED_REVOKED, where, f"the old CA's CRL lists it{_how(revocation)}")


# --- keys -------------------------------------------------------------------------------------


@sensitive_variables("passwords", "password", "private_key")
def _open_pkcs12(
    source: Source, passwords: Sequence[str], report: ImportReport
) -> tuple[keys.PrivateKey | None, str]:
    """The private key of a PKCS#12 file, trying each password and then the empty one, or
    None and why (what was wrong once a password opened it, else that none did). The
    passwords and the key are never logged, stored or put into a message.

    A file of several keys or certificates is reported: only the key paired with a
    certificate (the one load_pkcs12 returns) is archived."""
    why = "not a PKCS#12 file, or none of the passwords opens it"
    for password in dict.fromkeys([*passwords, ""]):
        try:
            private_key, certificate, chain = pkcs12.load_pkcs12(source.data, password)
        except X509Error as exc:
            if "password is wrong" not in exc.message:
                why = exc.message
            continue
        _report_contents(source, certificate, 1 + len(chain), report)
        return private_key, ""
    return None, why


def _report_contents(
    source: Source, certificate: x509.Certificate, certificates: int, report: ImportReport
) -> None:
    bags = pkcs12.pkcs12_bags(source.data)
    held = bags.keys if bags is not None else 1
    if held <= 1 and certificates <= 1:
        return
    keys_text = f"{held} private keys" if held > 1 else "1 private key"
    if bags is not None and bags.encrypted_parts and held > 1:
        keys_text += " (and maybe more in its encrypted parts)"
    report.lines.append(
        f"{source.name}: the file holds {keys_text} and {certificates} certificates; only the "
        f"key of {certificate.subject.rfc4514_string()} (serial "
        f"{format(certificate.serial_number, 'x')}) was used, the others were not archived"
    )


@dataclass(frozen=True)
class _Target:
    """A certificate of a key being archived: stored (``row``), or in a dry run planned."""

    fingerprint: str
    purpose: str
    holder: str
    row: Certificate | None


def _holder_key(holder: Holder) -> str:
    if holder.mailbox is not None:
        return f"mailbox {holder.mailbox.pk}"
    return f"account {holder.owner.pk if holder.owner else ''}"


def _row_holder(row: Certificate) -> str:
    return f"mailbox {row.mailbox_id}" if row.mailbox_id else f"account {row.owner_id or ''}"


def _targets(spki: str, planned: dict[str, list[_Target]]) -> tuple[list[_Target], set[str]]:
    """The imported certificates of this key (stored, then a dry run's planned ones), and
    the holders of every certificate of it, imported or issued here."""
    stored = list(
        Certificate.objects.filter(spki_sha256=spki, ca__is_imported=True)
        .select_related("archived_key")
        .order_by("pk")
    )
    targets = [_Target(c.fingerprint_sha256, c.purpose, _row_holder(c), c) for c in stored]
    known = {t.fingerprint for t in targets}
    targets += [t for t in planned.get(spki, []) if t.fingerprint not in known]
    holders = {t.holder for t in targets}
    holders.update(
        _row_holder(c)
        for c in Certificate.objects.filter(spki_sha256=spki, ca__is_imported=False).only(
            "owner", "mailbox"
        )
    )
    return targets, holders


@sensitive_variables("passwords", "private_key")
def _import_keys(
    key_sources: Sequence[Source],
    passwords: Sequence[str],
    report: ImportReport,
    planned: dict[str, list[_Target]],
) -> None:
    """Archive each PKCS#12's key to the current key recovery agents for every imported
    encryption-capable certificate of that key that has no archive yet.

    A key whose certificates belong to more than one holder is archived for none: its
    recovery would hand one holder's key to another."""
    agents = services._active_agents()
    if key_sources and not agents:
        if not report.dry_run:
            raise ConfigurationError(NO_AGENT)
        report.lines.append(f"Keys: {NO_AGENT}")
    for source in key_sources:
        private_key, why = _open_pkcs12(source, passwords, report)
        if private_key is None:
            report.note_key(KEY_UNREADABLE, source.name, why)
            continue
        spki = keys.spki_sha256(private_key.public_key())
        targets, holders = _targets(spki, planned)
        if not targets:
            report.note_key(
                KEY_NO_CERTIFICATE, source.name, "its key belongs to no imported certificate"
            )
            continue
        if len(holders) > 1:
            report.note_key(
                KEY_SEVERAL_HOLDERS,
                source.name,
                f"certificates of {len(holders)} different holders carry its key; "
                "archived for none (check them, and revoke what should not exist)",
            )
            continue
        for target in targets:
            _archive_one(target, source, private_key, agents, report)
        del private_key


@sensitive_variables("private_key")
def _archive_one(
    target: _Target,
    source: Source,
    private_key: keys.PrivateKey,
    agents: list[KeyRecoveryAgent],
    report: ImportReport,
) -> None:
    short = f"certificate {target.fingerprint[:16]}…"
    if target.purpose == "signing":
        report.note_key(KEY_SIGNING_ONLY, source.name, short)
        return
    row = target.row
    if row is not None and hasattr(row, "archived_key"):
        report.note_key(KEY_PRESENT, source.name, short)
        return
    if report.dry_run:
        report.note_key(KEY_ARCHIVED, source.name, f"would archive for {short}")
        return
    if row is None:  # not stored after all (a failed import): nothing to archive for
        report.note_key(KEY_NO_CERTIFICATE, source.name, f"{short} was not imported")
        return
    try:
        with transaction.atomic():
            if ArchivedKey.objects.filter(certificate=row).exists():
                report.note_key(KEY_PRESENT, source.name, short)
                return
            services._key_archive(
                certificate=row,
                private_key=private_key,
                agents=agents,
                actor=None,
                detail={"source": "import", "serial": row.serial},
            )
    except IntegrityError:  # another run archived it meanwhile
        report.note_key(KEY_PRESENT, source.name, f"{short} (by another run)")
        return
    report.note_key(KEY_ARCHIVED, source.name, short)


# --- the run ------------------------------------------------------------------------------------


@sensitive_variables("passwords")
def certificates_import(
    *,
    issuers: Sequence[Source],
    sources: Sequence[Source],
    key_sources: Sequence[Source] = (),
    passwords: Sequence[str] = (),
    crls: Sequence[Source] = (),
    skip_revoked: bool = False,
    include_expired: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Register the issuers, import the certificates they signed, archive the keys given.

    Raises X509Error for an issuer file that is not a CA certificate (nothing is written
    then); every problem with a certificate or key file is reported, never raised."""
    now = now or timezone.now()
    report = ImportReport(dry_run=dry_run)
    if key_sources and not dry_run and not services._active_agents():
        raise ConfigurationError(NO_AGENT)  # before anything is written
    issuer_certificates: list[x509.Certificate] = []
    for source in issuers:
        try:
            loaded = load_certificates(source.data)
        except X509Error as exc:
            raise X509Error(f"{source.name}: {exc.message}") from None
        for certificate in loaded:
            if isinstance(certificate, X509Error):
                raise X509Error(f"{source.name}: {certificate.message}")
            try:
                check_issuer_certificate(certificate)
            except X509Error as exc:
                raise X509Error(f"{source.name}: {exc.message}") from None
            issuer_certificates.append(certificate)
    # The CRLs before anything is written: a revoked certificate must not come in as valid
    # because its CRL could not be read or verified.
    issuer_fingerprints = [pkcs7.fingerprint(c, "sha256") for c in issuer_certificates]
    revoked = _revocations(crls, issuer_certificates, issuer_fingerprints, report)
    if report.crls_refused and not dry_run:
        refused = [line for line in report.crls if ": refused: " in line]
        raise X509Error(
            "Nothing was imported: " + "; ".join(refused) + ". Give each CRL with the "
            "--issuer that signed it (or leave it out)."
        )
    authorities: list[CertificateAuthority | None] = []
    for certificate in issuer_certificates:
        ca, new = _issuer_ca(certificate, dry_run=dry_run)
        authorities.append(ca)
        verb = ("would register" if dry_run else "registered") if new else "already registered"
        report.issuers.append(f"{_issuer_name(certificate)}: {verb}")
    if not dry_run:
        _link_parents([ca for ca in authorities if ca is not None])

    planned: dict[str, list[_Target]] = {}
    seen: set[str] = set()
    recorded: set[int] = set()
    for where, certificate in _readable(sources, report):
        fingerprint = pkcs7.fingerprint(certificate, "sha256")
        present = Certificate.objects.filter(fingerprint_sha256=fingerprint).select_related("ca")
        row = None if fingerprint in seen else present.first()
        if fingerprint in seen or row is not None:
            seen.add(fingerprint)
            listed = (
                revoked.get((row.ca.fingerprint_sha256, int(row.serial, 16)))
                if row is not None and row.ca.is_imported
                else None
            )
            if row is not None and listed is not None and row.status == Certificate.Status.VALID:
                recorded.add(row.pk)
                _record_revoked(row, listed, where, report)
            else:
                report.note(PRESENT, where, f"fingerprint {fingerprint[:16]}…")
            continue
        seen.add(fingerprint)
        verdict = classify(certificate, issuer_certificates, now=now)
        if verdict.verdict is Verdict.EXPIRED and include_expired:
            verdict = dataclasses.replace(verdict, verdict=Verdict.OK)
        if verdict.verdict is not Verdict.OK:
            report.note(_VERDICTS[verdict.verdict], where, verdict.reason)
            continue
        holder, category, why = _holder(email_addresses(certificate))
        if holder is None:
            report.note(category, where, why)
            continue
        name = holder.mailbox.email if holder.mailbox else holder.address
        spki = keys.spki_sha256(certificate.public_key())  # type: ignore[arg-type]
        if KeyIdentity.objects.filter(spki_sha256=spki, compromised=True).exists():
            report.note(COMPROMISED, where, _COMPROMISED_TEXT)  # read again under its lock
            continue
        assert verdict.issuer_index is not None
        revocation = revoked.get(
            (issuer_fingerprints[verdict.issuer_index], certificate.serial_number)
        )
        if revocation is not None and skip_revoked:
            report.note(REVOKED_SKIPPED, where, f"the old CA's CRL lists it{_how(revocation)}")
            continue
        category = IMPORTED if revocation is None else IMPORTED_REVOKED
        if dry_run:
            # What the keys would find stored (a real run reads the rows it imported).
            planned.setdefault(spki, []).append(
                _Target(fingerprint, purpose(certificate), _holder_key(holder), None)
            )
            report.note(category, where, f"would import for {name}{_how(revocation)}")
            continue
        ca = authorities[verdict.issuer_index]
        assert ca is not None
        try:
            _import_one(
                certificate, ca=ca, holder=holder, fingerprint=fingerprint, revocation=revocation
            )
        except _KeyCompromised:
            report.note(COMPROMISED, where, _COMPROMISED_TEXT)
            continue
        except EnrollmentError as exc:  # its CRL entry's keyCompromise could not be applied
            report.note(REFUSED, where, exc.message)
            continue
        except IntegrityError:
            # Another run imported it meanwhile, or the old CA reused a serial number.
            if Certificate.objects.filter(fingerprint_sha256=fingerprint).exists():
                report.note(PRESENT, where, f"fingerprint {fingerprint[:16]}… (by another run)")
            else:
                serial = format(certificate.serial_number, "x")
                report.note(
                    DUPLICATE_SERIAL,
                    where,
                    f"{ca.name} issued serial {serial} twice; kept the first",
                )
            continue
        report.note(category, where, f"for {name}{_how(revocation)}")

    _revoke_listed(revoked, recorded, report)
    _import_keys(key_sources, passwords, report, planned)
    if not dry_run:
        audit_record(
            action="certificate.import_run",
            detail={
                "issuers": [ca.fingerprint_sha256 for ca in authorities if ca is not None],
                "certificates": {key: report.counts[key] for key in CATEGORIES},
                "keys": {key: report.key_counts[key] for key in KEY_CATEGORIES},
                "include_expired": include_expired,
                "crls": report.crls,
            },
        )
    return report


def _how(revocation: Revocation | None) -> str:
    if revocation is None:
        return ""
    why = f", {revocation.reason}" if revocation.reason else ""
    return f" (revoked {revocation.revoked_at:%Y-%m-%d %H:%M} UTC{why})"


def _revoke_listed(
    revoked: dict[tuple[str, int], Revocation], recorded: set[int], report: ImportReport
) -> None:
    """Certificates imported before (by an earlier run) that a CRL given now lists, and
    that are still valid here: recorded revoked, their files given again or not. Read a
    thousand serial numbers at a time: a CRL may list many."""
    by_issuer: dict[str, dict[str, Revocation]] = {}
    for (issuer, serial), revocation in revoked.items():
        by_issuer.setdefault(issuer, {})[format(serial, "x")] = revocation
    for issuer, listed in by_issuer.items():
        serials = sorted(listed)
        for start in range(0, len(serials), 1000):
            rows = (
                Certificate.objects.filter(
                    ca__fingerprint_sha256=issuer,
                    ca__is_imported=True,
                    serial__in=serials[start : start + 1000],
                    status=Certificate.Status.VALID,
                )
                .exclude(pk__in=recorded)
                .order_by("pk")
            )
            for row in rows:
                _record_revoked(row, listed[row.serial], f"serial {row.serial}", report)


def _revocations(
    crls: Sequence[Source],
    issuers: list[x509.Certificate],
    fingerprints: list[str],
    report: ImportReport,
) -> dict[tuple[str, int], Revocation]:
    """Every entry of the CRLs given, by (issuer fingerprint, serial): only CRLs whose
    signature verifies with an issuer given; any other is refused and reported."""
    found: dict[tuple[str, int], Revocation] = {}
    for source in crls:
        try:
            crl = load_crl(source.data)
            signer = crl_signer(crl, issuers)
            if signer is None:
                raise X509Error(
                    f"issued by {crl.issuer.rfc4514_string()}, and no issuer given with "
                    "--issuer verifies its signature"
                )
            entries = crl_revocations(crl)
        except X509Error as exc:
            report.crls_refused += 1
            report.crls.append(f"{source.name}: refused: {exc.message}")
            continue
        for serial, revocation in entries.items():
            found.setdefault((fingerprints[signer], serial), revocation)
        report.crls.append(
            f"{source.name}: verified with {_issuer_name(issuers[signer])}, "
            f"{len(entries)} revoked serial number(s)"
        )
    return found


_COMPROMISED_TEXT = (
    "its key was reported compromised (a certificate of it was revoked for keyCompromise); "
    "not imported"
)
_LINE_BREAK = re.compile(r"\r?\n")


def passwords_from(text: str) -> list[str]:
    """A password file: one password per line (each is tried on every PKCS#12, and then
    the empty one). A leading UTF-8 byte order mark (Notepad's) is not part of the first."""
    return [line for line in _LINE_BREAK.split(text.removeprefix("\ufeff")) if line]
