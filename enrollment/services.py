"""Every state change of the CA side: atomic, keyword-only, audited in the same transaction.

Views, the API, the admin, management commands and tasks call these functions; none of
them writes CA models directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import string
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from knox.models import AuthToken

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError, connection, models, transaction
from django.db.models import Case, Q, QuerySet, Value, When
from django.db.models.signals import post_save
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy
from django.views.decorators.debug import sensitive_variables

from accounts.models import EMAIL_KEY, User
from enrollment import audit, binary, ca_lifetime, hotsql, keystore, ldap_publish
from enrollment.audit import audit_record
from enrollment.change_audit import template_record
from enrollment.exceptions import (
    Busy,
    ConfigurationError,
    EnrollmentError,
    InvalidState,
    KeyStoreError,
    NotPermitted,
    PolicyViolation,
    RateLimited,
    public_message,
)
from enrollment.models import (
    CRL_QUEUED_AT,
    ApiToken,
    ArchivedKey,
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertificateRequest,
    CertificateTemplate,
    CrlEntry,
    KeyIdentity,
    KeyRecoveryAgent,
    RevocationList,
    ScheduledRun,
    SharedMailbox,
)
from enrollment.ra_selectors import (
    archives_only_agent_opens,
    usable_agents,
    usable_agents_locked,
)
from enrollment.scopes import reach_of
from enrollment.x509 import builder, cms, crl_fast, keys, names, pkcs7, pkcs12
from enrollment.x509.crl import (
    MAX_CA_CRL_VALIDITY,
    MAX_SUBSCRIBER_CRL_VALIDITY,
    RevocationReason,
    RevokedEntry,
)
from enrollment.x509.csr import ParsedCsr, parse_csr
from enrollment.x509.errors import X509Error
from enrollment.x509.mail_domains import (
    address_permitted,
    issuer_mail_domains,
    issuer_permits,
    parse_mail_domains,
)
from enrollment.x509.policy import CertificateType
from pkiportal import plurals
from pkiportal.i18n import mid_sentence_when_read
from pkiportal.i18n import worded as _worded

logger = logging.getLogger(__name__)

Actor = User | AnonymousUser | None
T = TypeVar("T")


def _in_a_transaction(function: Callable[..., T]) -> Callable[..., T]:
    """Run in the caller's transaction, or in one of its own when there is none: a row
    lock taken inside must last until the writes after it are committed. No savepoint
    when nested (two statements more per enrolment), and a refusal raised inside leaves
    the caller's transaction as usable as before."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if not transaction.get_autocommit():
            return function(*args, **kwargs)
        with transaction.atomic():
            return function(*args, **kwargs)

    return wrapper


# --- refused privileged attempts -----------------------------------------------------

ACCESS_REFUSED = "access.refused"


def access_refusal_record(
    *,
    actor: Actor,
    attempted: str,
    target: models.Model,
    refusal: str,
    source_address: str | None = None,
) -> bool:
    """One ``access.refused`` event (outcome failure) for a privileged action refused to
    someone holding a role (RA officer, key recovery agent, superuser) for who they are:
    ``attempted``, the action's audit name (``request.approve``); the event's object, what
    it was attempted on; ``reason``, why (a key of permissions.REFUSALS). Written apart from
    the refused action (audit_record_apart), which changed nothing. Whether it was written.

    Someone without a role is refused as everyone is (a 403 or 404 at an officer's page or
    endpoint, before any service) and not recorded: they attempted nothing a role would
    allow, and recording them would let every account write to the audit chain, whose
    head's lock each event takes."""
    from enrollment.permissions import holds_token_role

    if not refusal or not holds_token_role(actor):
        return False
    audit.audit_record_apart(
        action=ACCESS_REFUSED,
        actor=actor,
        target=target,
        outcome=AuditEvent.Outcome.FAILURE,
        source_address=source_address,
        detail={"attempted": attempted, "reason": refusal},
    )
    return True


@contextlib.contextmanager
def access_refusals_recorded(
    *, actor: Actor, attempted: str, target: models.Model, source_address: str | None = None
) -> Iterator[None]:
    """access_refusal_record() for a NotPermitted raised inside that names its refusal."""
    try:
        yield
    except NotPermitted as refused:
        access_refusal_record(
            actor=actor,
            attempted=attempted,
            target=target,
            refusal=refused.refusal,
            source_address=source_address,
        )
        raise


# RevocationList.number is a PositiveBigIntegerField: signed 64-bit in every database.
MAX_STORED_CRL_NUMBER = 2**63 - 1
# CRLs kept per CA, newest first; a million-entry CRL is ~50 MB.
CRL_HISTORY = 10


def _der_facts(certificate: x509.Certificate) -> dict[str, object]:
    """The indexed columns every stored certificate carries."""
    return {
        "der": pkcs7.certificate_der(certificate),  # encoded once with its fingerprints
        "serial": format(certificate.serial_number, "x"),
        "fingerprint_sha256": pkcs7.fingerprint(certificate, "sha256"),
        "subject": certificate.subject.rfc4514_string(),
        "not_before": certificate.not_valid_before_utc,
        "not_after": certificate.not_valid_after_utc,
    }


# --- the CA hierarchy -----------------------------------------------------------------


@dataclass(frozen=True)
class CaSpec:
    """What create_pki asks for one CA; ``existing_key``: a key the operator made in the
    HSM (PKIPORTAL_KEY_BACKEND=pkcs11), whose type then wins over ``algorithm``, and which
    is refused if it can leave the token unless ``allow_extractable_key``."""

    name: str
    slug: str
    algorithm: keys.KeyAlgorithm
    validity_days: int
    existing_key: keystore.TokenKeySelector | None = None
    allow_extractable_key: bool = False


def _key_detail(ca: CertificateAuthority, spec: CaSpec) -> dict[str, object]:
    """Where a new CA's key is, for its ca.create event: an HSM key with what the token
    says of it (keystore.KeyFacts), and whether the operator let an extractable one in."""
    facts = keystore.ca_key_facts(ca)
    detail: dict[str, object] = {
        "key_backend": ca.key_backend,
        "key_reference": ca.key_reference,
        "key_facts": facts.as_dict() if facts is not None else None,
    }
    if spec.allow_extractable_key:
        detail["allow_extractable_key"] = True
    return detail


def pki_create(
    *,
    root: CaSpec,
    issuing: CaSpec,
    base_url: str,
    root_key_path: Path,
    root_passphrase: bytes,
    organization_name: str,
    country_name: str,
    mail_domains: Sequence[str] = (),
    actor: Actor = None,
) -> tuple[CertificateAuthority, CertificateAuthority]:
    """Create the offline root and the online issuing CA; refuse if a hierarchy exists.

    Both CA certificates name ``organization_name`` and ``country_name``, which S/MIME BR
    7.1.4.3.1 requires: refused before any key is made when either is missing. The
    issuing CA is name-constrained to ``mail_domains`` when given; the root never is.
    """
    if CertificateAuthority.objects.ours().exists():
        raise InvalidState(_("A CA hierarchy already exists; refusing to create another."))
    try:
        builder.check_ca_subject(organization_name, country_name)
    except X509Error as exc:
        raise PolicyViolation.from_x509(exc) from exc
    domains = _constraint_domains(mail_domains)
    if root.slug == issuing.slug:
        raise PolicyViolation(_("The root and the issuing CA need different slugs."))
    base_url = _check_base_url(base_url)
    root_certificate = keystore.create_root(
        algorithm=root.algorithm,
        key_path=root_key_path,
        passphrase=root_passphrase,
        common_name=root.name,
        organization_name=organization_name,
        country_name=country_name,
        validity_days=root.validity_days,
    )
    stored: tuple[str, str] | None = None
    try:
        with transaction.atomic():
            root_ca = CertificateAuthority.objects.create(
                name=root.name,
                slug=root.slug,
                is_online=False,
                key_backend="",
                crl_validity_days=settings.PKIPORTAL_ROOT_CRL_VALIDITY_DAYS,
                **_repository_urls(base_url, root.slug),
                **_der_facts(root_certificate),
            )
            issuing_certificate, backend, reference = keystore.create_issuing(
                label=issuing.slug,
                algorithm=issuing.algorithm,
                root=root_ca,
                root_key=keystore.OfflineKey(Path(root_key_path), root_passphrase),
                common_name=issuing.name,
                organization_name=organization_name,
                country_name=country_name,
                validity_days=issuing.validity_days,
                mail_domains=domains,
                existing_key=issuing.existing_key,
                allow_extractable_key=issuing.allow_extractable_key,
            )
            stored = (backend, reference)
            issuing_ca = CertificateAuthority.objects.create(
                name=issuing.name,
                slug=issuing.slug,
                parent=root_ca,
                is_online=True,
                key_backend=backend,
                key_reference=reference,
                crl_validity_days=settings.PKIPORTAL_CRL_VALIDITY_DAYS,
                is_default=True,
                # One responder for every online CA; the root's key is offline, so the
                # root has none and the issuing CA's certificate names none.
                ocsp_url=_ocsp_url(base_url),
                **_repository_urls(base_url, issuing.slug),
                **_der_facts(issuing_certificate),
            )
            audit_record(action="ca.create", actor=actor, target=root_ca)
            audit_record(
                action="ca.create",
                actor=actor,
                target=issuing_ca,
                detail={"name_constraints": list(domains), **_key_detail(issuing_ca, issuing)},
            )
    except BaseException as exc:
        # Nothing half-made may block a second attempt: both new key files go too.
        Path(root_key_path).unlink(missing_ok=True)
        if stored is not None:
            keystore.discard_key(*stored)
        if isinstance(exc, X509Error):  # the builder's refusal: an operator's weak HSM key
            raise PolicyViolation.from_x509(exc) from exc
        raise
    crl_publish(ca=issuing_ca, actor=actor)
    return root_ca, issuing_ca


def _constraint_domains(mail_domains: Sequence[str]) -> tuple[str, ...]:
    """The mail domains a new issuing CA is constrained to, canonical; refused, before any
    key is made, when one is not a domain RFC 5280 4.2.1.10 can constrain to."""
    try:
        return parse_mail_domains(mail_domains)
    except X509Error as exc:
        raise PolicyViolation.from_x509(exc, field="mail_domains") from exc


def default_issuing_ca() -> CertificateAuthority:
    """The CA of templates that name none (CertificateAuthority.is_default)."""
    return _online_issuing_ca(hotsql.default_issuing_ca())


def _online_issuing_ca(ca: CertificateAuthority | None) -> CertificateAuthority:
    if ca is None:
        raise ConfigurationError(
            _(
                "No default issuing CA exists: run `manage.py create_pki`, or make one the "
                "default with `manage.py switch_issuing_ca`."
            )
        )
    return ca


def _check_base_url(base_url: str) -> str:
    base_url = base_url.rstrip("/")
    if not base_url.startswith("http://"):
        raise PolicyViolation(_("The base URL must be plain http:// (RFC 5280 CDP and AIA)."))
    return base_url


def _repository_urls(base_url: str, slug: str) -> dict[str, str]:
    """Where /pki/ publishes a CA's CRL and certificate: embedded in all it issues."""
    return {
        "crl_url": f"{base_url}/pki/{slug}.crl",
        "ca_issuers_url": f"{base_url}/pki/{slug}.crt",
    }


def _ocsp_url(base_url: str) -> str:
    """The one responder that answers for every online CA (directory/ocsp_views.py)."""
    return f"{base_url}/pki/ocsp/"


# A CA's slug names its /pki/ files and its key file in the key store (keystore.py).
_CA_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?")


@sensitive_variables()  # the root key's passphrase, here and below
def issuing_ca_create(
    *,
    spec: CaSpec,
    root: CertificateAuthority,
    root_key: keystore.OfflineKey,
    base_url: str,
    organization_name: str,
    country_name: str,
    mail_domains: Sequence[str] = (),
    actor: Actor = None,
) -> CertificateAuthority:
    """A new online issuing CA certified by the offline root, for an issuing CA's end
    (or to name-constrain issuance to ``mail_domains``, which an existing CA cannot gain).

    The root key is read from the operator's file for this call only, never stored. No
    template moves to the new CA (issuing_ca_switch does that, when clients are ready),
    and nothing is left behind when it fails: no key file, no row, no event.
    """
    if not root.is_root or root.is_online:
        raise PolicyViolation(_("%(ca)s is not the offline root CA."), params={"ca": root.name})
    if not _CA_SLUG.fullmatch(spec.slug):
        raise PolicyViolation(
            _(
                "The slug %(slug)s must be 1 to 50 lower-case letters, digits and hyphens "
                "(it names /pki/<slug>.crt, .crl and the key file)."
            ),
            params={"slug": repr(spec.slug)},
            field="slug",
        )
    name = spec.name.strip()
    _check_ca_text("name", name, builder.UB_COMMON_NAME)
    _check_ca_text("organisation", organization_name.strip(), builder.UB_ORGANIZATION_NAME)
    if CertificateAuthority.objects.filter(slug=spec.slug).exists():
        raise InvalidState(
            _("A CA with the slug %(slug)s exists already: choose another."),
            params={"slug": repr(spec.slug)},
            field="slug",
        )
    # Relying parties (dirmngr's CRL cache, for one) tell CAs apart by their name.
    if CertificateAuthority.objects.filter(name=name).exists():
        raise InvalidState(
            _("A CA named %(name)s exists already: give the new one a name of its own."),
            params={"name": repr(name)},
            field="name",
        )
    try:
        builder.check_ca_subject(organization_name, country_name)
    except X509Error as exc:
        raise PolicyViolation.from_x509(exc) from exc
    base_url = _check_base_url(base_url)
    domains = _constraint_domains(mail_domains)
    stored: tuple[str, str] | None = None
    try:
        with transaction.atomic():
            certificate, backend, reference = keystore.create_issuing(
                label=spec.slug,
                algorithm=spec.algorithm,
                root=root,
                root_key=root_key,
                common_name=name,
                organization_name=organization_name,
                country_name=country_name,
                validity_days=spec.validity_days,
                mail_domains=domains,
                existing_key=spec.existing_key,
                allow_extractable_key=spec.allow_extractable_key,
            )
            stored = (backend, reference)
            ca = CertificateAuthority.objects.create(
                name=name,
                slug=spec.slug,
                parent=root,
                is_online=True,
                key_backend=backend,
                key_reference=reference,
                crl_validity_days=settings.PKIPORTAL_CRL_VALIDITY_DAYS,
                ocsp_url=_ocsp_url(base_url),
                **_repository_urls(base_url, spec.slug),
                **_der_facts(certificate),
            )
            audit_record(
                action="ca.create",
                actor=actor,
                target=ca,
                detail={
                    "slug": ca.slug,
                    "parent": root.slug,
                    "key_algorithm": _key_algorithm(certificate),
                    **_key_detail(ca, spec),
                    "not_before": ca.not_before,
                    "not_after": ca.not_after,
                    "fingerprint_sha256": ca.fingerprint_sha256,
                    "name_constraints": list(domains),
                },
            )
    except X509Error as exc:  # the builder's refusal: the root has expired, bad validity
        if stored is not None:
            keystore.discard_key(*stored)
        raise PolicyViolation.from_x509(exc) from exc
    except BaseException:
        if stored is not None:
            keystore.discard_key(*stored)
        raise
    crl_publish(ca=ca, actor=actor)
    return ca


def _key_algorithm(certificate: x509.Certificate) -> str:
    """The CA key's type as certified: an HSM key the operator made decides its own."""
    algorithm = keys.key_algorithm_of(certificate.public_key())
    return (
        algorithm.value
        if algorithm is not None
        else keys.describe_public_key(certificate.public_key())
    )


def _check_ca_text(label: str, value: str, limit: int) -> None:
    """A CA's name or organisation: printable (no NUL for the database, no control
    characters in a certificate) and within RFC 5280's upper bound."""
    if not value or len(value) > limit or not value.isprintable():
        raise PolicyViolation(
            _("The CA's name must be 1 to %(limit)d printable characters (RFC 5280).")
            if label == "name"
            else _("The CA's organisation must be 1 to %(limit)d printable characters (RFC 5280)."),
            params={"limit": limit},
            field="name" if label == "name" else None,
        )


@dataclass(frozen=True)
class IssuingCaSwitch:
    """What issuing_ca_switch moved, as its audit event records it."""

    previous: CertificateAuthority | None
    current: CertificateAuthority
    made_default: bool
    templates: list[str]  # slugs of every template that now issues from ``current``
    template_names: list[str]  # their names, for people (the audit event keeps slugs)


@dataclass(frozen=True)
class IssuingCaSwitchPlan:
    """What a switch to ``current`` changes, checked: issuing_ca_switch carries it out, and
    the admin lists it (issuing_ca_switch_preview) before anyone confirms."""

    previous: CertificateAuthority | None
    current: CertificateAuthority
    made_default: bool  # ``current`` becomes the default CA
    moved: tuple[CertificateTemplate, ...]  # name ``previous``; will name ``current``
    following: tuple[CertificateTemplate, ...]  # name no CA: follow the default, ``current``

    @property
    def templates(self) -> list[str]:
        return sorted({template.slug for template in (*self.following, *self.moved)})

    @property
    def template_names(self) -> list[str]:
        return sorted({template.name for template in (*self.following, *self.moved)})


def _switch_plan(
    to: CertificateAuthority, previous: CertificateAuthority | None, *, lock: bool
) -> IssuingCaSwitchPlan:
    """The switch's checks and its templates, read from the rows given (locked by the
    caller when switching; ``lock`` locks the templates that move too)."""
    now = timezone.now()
    if previous is not None and previous.pk == to.pk:
        raise InvalidState(_("Templates already issue from %(ca)s."), params={"ca": to.name})
    if not to.is_online or to.parent_id is None:
        raise PolicyViolation(_("%(ca)s is not an online issuing CA."), params={"ca": to.name})
    if to.not_after <= now:
        raise PolicyViolation(
            _("%(ca)s expired on %(date)s."),
            params={"ca": to.name, "date": f"{to.not_after:%Y-%m-%d}"},
        )
    if to.not_before > now:
        raise PolicyViolation(
            _("%(ca)s is valid only from %(start)s UTC."),
            params={"ca": to.name, "start": f"{to.not_before:%Y-%m-%d %H:%M}"},
        )
    keystore.check_ca_key(to)
    made_default = previous is None or previous.is_default
    moved: tuple[CertificateTemplate, ...] = ()
    if previous is not None:
        naming = CertificateTemplate.objects.filter(issuing_ca=previous).order_by("slug")
        moved = tuple(naming.select_for_update() if lock else naming)
    following: tuple[CertificateTemplate, ...] = ()
    if made_default:
        following = tuple(
            CertificateTemplate.objects.filter(issuing_ca__isnull=True).order_by("slug")
        )
    for template in (*moved, *following):
        # A CA too near its own end would refuse what the old one still issues.
        if template.is_active and (refusal := ca_lifetime.issuance_problem(to, template)):
            raise PolicyViolation(refusal)
    return IssuingCaSwitchPlan(previous, to, made_default, moved, following)


def issuing_ca_switch_preview(
    *, to: CertificateAuthority, from_ca: CertificateAuthority | None = None
) -> IssuingCaSwitchPlan:
    """What issuing_ca_switch would change now, or the refusal it would raise; changes
    nothing, so a person can see it before confirming (the admin's action)."""
    current = CertificateAuthority.objects.get(pk=to.pk)
    if from_ca is None:
        previous = CertificateAuthority.objects.filter(is_default=True).first()
    else:
        previous = CertificateAuthority.objects.get(pk=from_ca.pk)
    return _switch_plan(current, previous, lock=False)


def issuing_ca_switch(
    *,
    to: CertificateAuthority,
    from_ca: CertificateAuthority | None = None,
    actor: Actor = None,
    source_address: str | None = None,
) -> IssuingCaSwitch:
    """Every template that issues from ``from_ca`` (default: the default CA) issues from
    ``to`` from now on: those that name it are changed, and ``to`` becomes the default
    if ``from_ca`` was it. Certificates already issued stay with their CA.

    Refused unless ``to`` can sign now for every active template that moves: an online
    issuing CA inside its validity, not too near its end, whose key loads. So a switch
    never stops enrolment.
    """
    with transaction.atomic():
        locked = CertificateAuthority.objects.select_for_update().get(pk=to.pk)
        default = CertificateAuthority.objects.select_for_update().filter(is_default=True).first()
        previous = default if from_ca is None else _locked_ca(from_ca)
        plan = _switch_plan(locked, previous, lock=True)
        if plan.made_default:
            # The old flag first: one_default_issuing_ca allows one at every statement.
            CertificateAuthority.objects.filter(is_default=True).update(is_default=False)
            CertificateAuthority.objects.filter(pk=locked.pk).update(is_default=True)
            locked.is_default = True
        for template in plan.moved:
            template.issuing_ca = locked
            template.save(update_fields=["issuing_ca"])
            template_record(
                action="template.change",
                template=template,
                before={"issuing_ca": previous.slug if previous is not None else None},
                after={"issuing_ca": locked.slug},
                actor=actor,
                source_address=source_address,
            )
        audit_record(
            action="ca.switch",
            actor=actor,
            target=locked,
            source_address=source_address,
            detail={
                "from": previous.slug if previous is not None else None,
                "to": locked.slug,
                "default": plan.made_default,
                "templates": plan.templates,
            },
        )
    return IssuingCaSwitch(previous, locked, plan.made_default, plan.templates, plan.template_names)


def _locked_ca(ca: CertificateAuthority) -> CertificateAuthority:
    return CertificateAuthority.objects.select_for_update().get(pk=ca.pk)


# --- key recovery agents --------------------------------------------------------------


def kra_register(
    *,
    certificate: x509.Certificate,
    name: str,
    user: User | None = None,
    actor: Actor = None,
    source_address: str | None = None,
) -> KeyRecoveryAgent:
    """Register an agent certificate that archived keys will be encrypted to; the other
    agents and the administrators are mailed (it can open every key archived from now on)."""
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise PolicyViolation(
            _("A key recovery agent needs an RSA certificate (CMS key transport).")
        )
    now = timezone.now()
    if certificate.not_valid_after_utc <= now:
        raise PolicyViolation(_("The key recovery agent certificate has expired."))
    if certificate.not_valid_before_utc > now:
        raise PolicyViolation(_("The key recovery agent certificate is not valid yet."))
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_encipherment:
        raise PolicyViolation(
            _("The key recovery agent certificate does not allow keyEncipherment.")
        )
    facts = _der_facts(certificate)
    if KeyRecoveryAgent.objects.filter(fingerprint_sha256=facts["fingerprint_sha256"]).exists():
        raise InvalidState(_("This key recovery agent certificate is already registered."))
    with transaction.atomic():
        agent = KeyRecoveryAgent.objects.create(name=name, user=user, **facts)
        audit_record(
            action="kra.register", actor=actor, target=agent, source_address=source_address
        )
        from enrollment.ra_notifications import agent_registered

        agent_registered(agent, actor=actor, source_address=source_address)
    return agent


# Worded when read: the admin shows it, and manage.py deactivate_kra prints it.
NO_USABLE_AGENT_LEFT = _worded(
    _(
        "No usable key recovery agent is left: templates that archive keys cannot issue "
        "until one is registered (register_kra, or Register in the admin)."
    )
)


@dataclass(frozen=True)
class KraDeactivation:
    """What a deactivation leaves behind, as counted for its audit event."""

    agent: KeyRecoveryAgent
    archives_only_it_opens: int  # its private key must be kept while these may be needed
    usable_agents_left: int  # 0: templates that archive keys stop issuing


def kra_deactivate(
    *,
    agent: KeyRecoveryAgent,
    reason: str,
    actor: Actor = None,
    source_address: str | None = None,
) -> KraDeactivation:
    """Stop encrypting new archives to an agent: its holder left, or its key is in doubt.

    Keys archived before stay encrypted to it too. The server never holds a private key,
    so it cannot re-encrypt them: the audit event records how many only this agent can
    open, and so how long its private key must still be kept. Permanent: an agent is
    trusted again only through a new certificate, registered anew.
    """
    reason = " ".join(reason.split())
    if not reason:
        raise PolicyViolation(_("Say why the agent is deactivated."), field="reason")
    with transaction.atomic():
        locked = KeyRecoveryAgent.objects.select_for_update().get(pk=agent.pk)
        if not locked.is_active:
            raise InvalidState(_("%(agent)s is already inactive."), params={"agent": locked.name})
        locked.is_active = False
        locked.save(update_fields=["is_active"])
        outcome = KraDeactivation(
            agent=locked,
            archives_only_it_opens=archives_only_agent_opens(locked),
            usable_agents_left=usable_agents().count(),
        )
        audit_record(
            action="kra.deactivate",
            actor=actor,
            target=locked,
            source_address=source_address,
            detail={
                "reason": reason[:500],
                "archives_only_it_opens": outcome.archives_only_it_opens,
                "usable_agents_left": outcome.usable_agents_left,
            },
        )
    return outcome


def _active_agents() -> list[KeyRecoveryAgent]:
    return list(usable_agents())


# --- issuance -------------------------------------------------------------------------


NO_ADDRESS = _("Your account has no e-mail address; ask an administrator to add one.")


# ASCII letters only: what LOWER() gives on every database the portal runs on.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def account_email(owner: User) -> str:
    """The account's address as the database compares it, LOWER(TRIM(email)): spaces
    around it trimmed, ASCII letters lower-cased, nothing else touched. Python's strip()
    and lower() go further (a tab, a no-break space; the Kelvin sign to a k), so two
    accounts the database told apart were certified for one address. What is left over
    address_unusable() refuses."""
    return address_key(getattr(owner, "email", "") or "")


def address_key(text: str) -> str:
    """An address as the database compares addresses (accounts.models.EMAIL_KEY)."""
    return text.strip(" ").translate(_ASCII_LOWER)


def address_unusable(email: str) -> str | None:
    """Why no certificate can name this account address, or None: it holds white space,
    a control or a non-ASCII character (a directory's stray tab, a look-alike letter)."""
    if email.isascii() and email.isprintable() and " " not in email:
        return None
    return _worded(
        _(
            "The account's address %(address)s holds a character no e-mail address may "
            "(white space, a control or a non-ASCII character), so no certificate can be "
            "issued for it. An administrator must correct the account's address."
        ),
        address=names.printable(email),
    )


# Whose address address_outside_domains() speaks of: who must correct it differs.
_OUTSIDE_DOMAINS = {
    "account": _(
        "The e-mail address %(address)s is outside the organisation's mail domains "
        "(%(domains)s), so no certificate can be issued for it. An administrator must "
        "correct the account's address."
    ),
    "mailbox": _(
        "The e-mail address %(address)s is outside the organisation's mail domains "
        "(%(domains)s), so no certificate can be issued for it. An administrator must "
        "correct the mailbox's address."
    ),
    # A mailbox being made: whoever makes it gives another address.
    "new": _(
        "The e-mail address %(address)s is outside the organisation's mail domains "
        "(%(domains)s), so no certificate can be issued for it."
    ),
}


def address_outside_domains(email: str, *, holder: str = "account") -> str | None:
    """Why the CA may not certify this address (outside PKIPORTAL_MAIL_DOMAINS), or None.

    S/MIME BR 3.2.2.1: an Enterprise RA issues only for mailboxes in domains the
    organisation controls. The address is the account's (``holder``: or an existing
    shared mailbox's, or a ``new`` one's); only an administrator (or the directory it is
    synced from) can change it, so the message says so.
    """
    domains = settings.PKIPORTAL_MAIL_DOMAINS
    if address_permitted(email, domains):
        return None
    return _worded(
        _OUTSIDE_DOMAINS[holder], address=names.printable(email), domains=", ".join(domains)
    )


def account_address_problem(owner: User) -> str | None:
    """What stops any certificate being issued for this account's address, or None: for
    the enrolment pages to say up front what subject_for would refuse."""
    email = account_email(owner)
    if not email:
        return _worded(NO_ADDRESS)
    return (
        address_unusable(email) or address_outside_domains(email) or address_taken(email, owner.pk)
    )


def address_taken(email: str, owner_pk: int) -> str | None:
    """Why this account may not be certified for its address, or None: an active shared
    mailbox has it, or another active account does.

    A certificate binds the address to the holder's key, and the directory hands it out
    by address: two accounts with one address (a directory where people edit their own
    mail attribute, an admin's typo, two directory entries) would each sign as the other
    and receive mail encrypted for the other."""
    return mailbox_address_taken(email) or shared_with_another_account(email, owner_pk)


def other_account_with(email: str, owner_pk: int) -> User | None:
    """Another active account whose address is ``email`` (an address_key()), or None."""
    return (
        get_user_model()
        .objects.filter(is_active=True)
        .exclude(pk=owner_pk)
        .annotate(address=EMAIL_KEY)
        .filter(address=email)
        .first()
    )


def shared_with_another_account(email: str, owner_pk: int) -> str | None:
    """address_taken()'s second half: another active account has this address."""
    if other_account_with(email, owner_pk) is None:
        return None
    return _worded(
        _(
            "Another account has the address %(address)s too, so no certificate is issued "
            "for it until only one account has it. An administrator must correct the "
            "accounts' addresses."
        ),
        address=names.printable(email),
    )


def mailbox_address_taken(email: str) -> str | None:
    """Why a person may not be certified for this address, or None: an active shared
    mailbox has it. The directory hands certificates out by address, so a person's
    certificate for finance@ would take mail meant for every delegate (an account can get
    the address after the mailbox was made: the admin, a directory sync, single sign-on)."""
    if not SharedMailbox.objects.filter(email=email, is_active=True).exists():
        return None
    return _worded(
        _(
            "%(address)s is the address of a shared mailbox, so no personal certificate is "
            "issued for it; its delegates enrol for the mailbox instead. An administrator "
            "must correct the account's address."
        ),
        address=email,
    )


def account_common_name(owner: User) -> str:
    """The name a person's certificate carries: the display name, else given name and
    surname, else the user name. Pages say before issuance what it will be."""
    given = (getattr(owner, "first_name", "") or "").strip()
    surname = (getattr(owner, "last_name", "") or "").strip()
    display = (getattr(owner, "display_name", "") or "").strip()
    return display or " ".join(p for p in (given, surname) if p) or owner.get_username()


def subject_for(owner: User, *, address_checked: bool = False) -> builder.Subject:
    """The certificate subject comes from the account, never from a CSR or a form.

    Every issuance and every request goes through here, so the address rules (an
    address, within the organisation's mail domains, neither a shared mailbox's nor
    another account's) are checked once, in this place. ``address_checked``: the caller
    checked the last already (request_submit's counts, _decide), so the enrolment costs
    no statement more.
    """
    email = account_email(owner)
    if not email:
        raise PolicyViolation(NO_ADDRESS)
    outside = (
        address_unusable(email)
        or address_outside_domains(email)
        or (None if address_checked else address_taken(email, owner.pk))
    )
    if outside is not None:
        raise PolicyViolation(outside, field="email")
    given = (getattr(owner, "first_name", "") or "").strip()
    surname = (getattr(owner, "last_name", "") or "").strip()
    return builder.Subject(
        common_name=account_common_name(owner),
        given_name=given,
        surname=surname,
        organization_name=settings.PKIPORTAL_ORGANIZATION_NAME,
        country_name=settings.PKIPORTAL_COUNTRY_NAME,
        organization_identifier=settings.PKIPORTAL_ORGANIZATION_IDENTIFIER,
        email_addresses=(email,),
    )


def subject_for_mailbox(mailbox: SharedMailbox) -> builder.Subject:
    """A shared mailbox's subject comes from its record, never from a CSR or a form.

    Organization-validated (S/MIME BR 7.1.4.2.4; see CertificateType): the organisation's
    name and identifier, the mailbox address as the common name (7.1.4.2.2 a allows only
    that or the organisation's name, so the display name stays out) and in the SAN. The
    address is checked against the mail domains here, as a person's in subject_for.
    """
    email = (mailbox.email or "").strip().lower()
    outside = address_outside_domains(email, holder="mailbox")
    if outside is not None:
        raise PolicyViolation(outside, field="mailbox")
    return builder.Subject(
        common_name=email,
        organization_name=settings.PKIPORTAL_ORGANIZATION_NAME,
        country_name=settings.PKIPORTAL_COUNTRY_NAME,
        organization_identifier=settings.PKIPORTAL_ORGANIZATION_IDENTIFIER,
        email_addresses=(email,),
        certificate_type=CertificateType.ORGANIZATION_VALIDATED,
    )


def _check_ca_constraints(ca: CertificateAuthority, subject: builder.Subject) -> None:
    """Refuse an address the CA's own name constraints exclude: relying parties would reject
    the certificate. The operator's to fix (PKIPORTAL_MAIL_DOMAINS wider than the CA was
    made for), so a ConfigurationError naming what to do, not the requester's error."""
    for email in subject.email_addresses:
        if not issuer_permits(ca.certificate, email):
            permitted = ", ".join(issuer_mail_domains(ca.certificate) or ())
            raise ConfigurationError(
                _(
                    "%(ca)s is name-constrained to %(domains)s and cannot certify %(address)s. "
                    "An operator must issue from a CA whose constraint covers "
                    "PKIPORTAL_MAIL_DOMAINS (see README, Mail domains)."
                )
                if permitted
                else _(
                    "%(ca)s is name-constrained to other addresses and cannot certify "
                    "%(address)s. An operator must issue from a CA whose constraint covers "
                    "PKIPORTAL_MAIL_DOMAINS (see README, Mail domains)."
                ),
                params={
                    "ca": ca.name,
                    "domains": permitted,
                    "address": names.printable(email),
                },
            )


MAILBOX_NEEDS_SERVER_KEY = _(
    "A shared mailbox's key is generated by the portal and archived, so that its other "
    "delegates can get it through key recovery: a CSR cannot be used."
)


def _check_mailbox_template(template: CertificateTemplate) -> None:
    """A mailbox's key serves several people: only a template that archives the key it
    generates may issue for one, so no mailbox certificate exists without its archive.
    Encryption only, even where a dual-use template archives: a signing key several people
    hold signs for none of them in particular (and non-repudiation means nothing)."""
    if (
        not (template.archive_key and template.allow_server_key)
        or template.purpose != CertificateTemplate.Purpose.ENCRYPTION
    ):
        raise PolicyViolation(
            _(
                "%(template)s cannot issue for a shared mailbox: only an encryption template "
                "that generates and archives the key can (its delegates share the key)."
            ),
            params={"template": template.name},
            field="template",
        )


def may_hold(user: Any, certificate: Certificate) -> bool:
    """Whether ``user`` holds this certificate: its owner, or an active delegate of the
    active shared mailbox it names. Renewing, revoking and asking for its key are theirs."""
    if user is None or not user.is_authenticated:
        return False
    if certificate.owner_id is not None:
        return bool(certificate.owner_id == user.pk)
    if certificate.mailbox_id is None or not user.is_active:
        return False
    return SharedMailbox.objects.filter(
        pk=certificate.mailbox_id, is_active=True, delegates=user
    ).exists()


def lock_mailbox(mailbox_id: int | None) -> None:
    """Lock a shared mailbox's row until the transaction ends (nothing for None): who its
    delegates are, and whether it is active, cannot change meanwhile."""
    if mailbox_id is not None:
        list(SharedMailbox.objects.select_for_update().filter(pk=mailbox_id).values("pk"))


def is_delegate(user: Any, mailbox: SharedMailbox | None) -> bool:
    """An active account among the active mailbox's delegates (read from the database)."""
    if mailbox is None or user is None or not user.is_authenticated or not user.is_active:
        return False
    return SharedMailbox.objects.filter(pk=mailbox.pk, is_active=True, delegates=user).exists()


COMPROMISED_KEY = _(
    "This key was reported compromised: a certificate for it was revoked for keyCompromise. "
    "Make a new key and request again."
)


def _key_compromised(public_key: keys.PublicKey) -> bool:
    return KeyIdentity.objects.filter(
        spki_sha256=keys.spki_sha256(public_key), compromised=True
    ).exists()


@sensitive_variables("private_key")
@_in_a_transaction  # the key's row, claimed below, stays locked until the certificate is in
def _issue(
    *,
    template: CertificateTemplate,
    owner: User,
    public_key: keys.PublicKey,
    actor: Actor,
    source_address: str | None,
    private_key: keys.PrivateKey | None = None,
    supersedes: Certificate | None = None,
    mailbox: SharedMailbox | None = None,
    address_checked: bool = False,
    channel: str = "",
    fulfils: CertificateRequest | None = None,
) -> Certificate:
    """``owner`` is the holder, or for a shared ``mailbox`` the delegate it is issued to:
    the certificate then names the mailbox and has no owner (its delegates hold it).
    ``fulfils``: a request not yet stored, stored ISSUED with the certificate."""
    if not template.is_active:
        raise PolicyViolation(
            _("The template %(template)s is not active."),
            params={"template": repr(template.name)},
        )
    if mailbox is not None:
        _check_mailbox_template(template)
        if private_key is None:
            raise PolicyViolation(MAILBOX_NEEDS_SERVER_KEY, field="csr")
        subject = subject_for_mailbox(mailbox)
    else:
        # Before any row is touched: the account may be refused.
        subject = subject_for(owner, address_checked=address_checked)
    spki_sha256 = keys.spki_sha256(public_key)
    by_default = template.issuing_ca_id is None
    compromised, found = hotsql.claim_key(spki_sha256, default_ca=by_default)
    if compromised:
        # S/MIME BR 6.1.1.3 (4): a key known to be compromised is never certified again.
        raise PolicyViolation(COMPROMISED_KEY, field="csr")
    # No query for issuing_ca when issuing_ca_id is None: it is None exactly then.
    ca = _online_issuing_ca(found) if template.issuing_ca is None else template.issuing_ca
    # Near the CA's end a certificate is cut to end with it; one cut absurdly short, or
    # from an expired CA, is the operator's to fix (a successor CA), not the requester's.
    refused = ca_lifetime.issuance_problem(ca, template)
    if refused is not None:
        raise ConfigurationError(refused)
    _check_ca_constraints(ca, subject)
    if template.archive_key:
        if private_key is None:
            raise PolicyViolation(
                _(
                    "%(template)s archives keys, so the portal must generate the key; "
                    "a CSR cannot be used."
                ),
                params={"template": template.name},
            )
        agents = _active_agents()
        if not agents:
            raise ConfigurationError(
                _(
                    "No valid key recovery agent is configured, so %(template)s cannot issue: "
                    "an encryption key must be archived before the certificate exists."
                ),
                params={"template": template.name},
            )
    try:
        policy = template.policy()
        if mailbox is not None:
            policy = dataclasses.replace(
                policy, certificate_type=CertificateType.ORGANIZATION_VALIDATED
            )
        issued = keystore.issue_end_entity(
            ca, public_key=public_key, subject=subject, policy=policy
        )
    except X509Error as exc:
        raise PolicyViolation.from_x509(exc) from exc
    with audit.deferred():
        certificate = _new_certificate(
            ca=ca,
            owner=owner if mailbox is None else None,
            mailbox=mailbox,
            template=template,
            subject=subject,
            issued=issued,
            public_key=public_key,
            spki_sha256=spki_sha256,
        )
        if fulfils is not None:
            fulfils.state = CertificateRequest.State.ISSUED
            hotsql.insert_issued(certificate, fulfils)  # one statement for both rows
        else:
            hotsql.insert(certificate)
        if template.archive_key:
            assert private_key is not None
            _key_archive(
                certificate=certificate, private_key=private_key, agents=agents, actor=actor
            )
        renewed = _renewed_locked(supersedes) if supersedes is not None else None
        audit_record(
            action="certificate.issue",
            actor=actor,
            target=certificate,
            source_address=source_address,
            detail=_issue_detail(
                certificate,
                template=template,
                mailbox=mailbox,
                delegate=owner,
                channel=channel,
                renewed=renewed,
            ),
        )
        # The directory (when configured) learns of it from a task queued after the commit:
        # a settings read and an on_commit registration here, no SQL, no network. A
        # mailbox's certificates are not published to LDAP (README, Shared mailboxes).
        ldap_publish.publish_on_commit(certificate.owner_id)
        if mailbox is not None:
            # Mailed after the commit to the mailbox and every delegate: a key one of them
            # holds now takes the mailbox's encrypted mail, and the others must know.
            from enrollment.ra_notifications import mailbox_certificate_issued

            mailbox_certificate_issued(certificate, delegate=owner)
        if renewed is not None and renewed.status == Certificate.Status.VALID:
            # Renewal: the old certificate is superseded in the same transaction (RFC 5280
            # 5.3.1), unless it was revoked already (_renewed_locked).
            _revoke(
                certificate=renewed,
                reason="superseded",
                actor=actor,
                source_address=source_address,
                invalidity_date=None,
            )
    return certificate


def _renewed_locked(old: Certificate) -> Certificate:
    """The certificate a renewal replaces, its row locked, read for the supersede step.

    Read under the lock, not before it: a revocation committed after the renewal's own
    checks (its holder reporting keyCompromise, an officer, the leaver or old-address
    run) is seen here, where it used to meet "already revoked" and roll the renewal back.
    Such a certificate stays revoked as it is: that revocation is the earlier one, and
    its reason says more than superseded (never is keyCompromise overwritten). The
    renewal goes on and the issue event names the old serial and its reason
    (``renewed_revoked``), in place of a certificate.revoke event of its own.

    What the person sees: their new certificate, as after any renewal (the web page, the
    PKCS#12 download, the API's answer); no error, since they passed every check and
    asked for a new certificate, which they would get by requesting one anyway. The old
    certificate's page shows the revocation that was made, which mailed them.
    """
    return Certificate.objects.select_for_update().get(pk=old.pk)


def _new_certificate(
    *,
    ca: CertificateAuthority,
    owner: User | None,
    mailbox: SharedMailbox | None,
    template: CertificateTemplate,
    subject: builder.Subject,
    issued: x509.Certificate,
    public_key: keys.PublicKey,
    spki_sha256: str,
) -> Certificate:
    """The row of a certificate just signed, not yet stored."""
    emails = [e.lower() for e in subject.email_addresses]
    certificate = Certificate(
        ca=ca,
        owner=owner,
        mailbox=mailbox,
        template=template,
        purpose=template.purpose,
        common_name=subject.common_name,
        email=emails[0],
        emails=emails,
        fingerprint_sha1=pkcs7.fingerprint(issued, "sha1"),
        key_algorithm=keys.describe_public_key(public_key),
        spki_sha256=spki_sha256,
        **_der_facts(issued),
    )
    certificate.__dict__["certificate"] = issued  # the cached_property, not re-parsed
    return certificate


def _issue_detail(
    certificate: Certificate,
    *,
    template: CertificateTemplate,
    mailbox: SharedMailbox | None,
    delegate: User,
    channel: str,
    renewed: Certificate | None = None,
) -> dict[str, object]:
    """The detail of a certificate.issue event; a renewal names the certificate it renews,
    and that certificate's reason if it was revoked already (so not superseded)."""
    return {
        "template": template.slug,
        "serial": certificate.serial,
        **({"renews": renewed.serial} if renewed is not None else {}),
        **(
            {"renewed_revoked": renewed.revocation_reason or "unspecified"}
            if renewed is not None and renewed.status == Certificate.Status.REVOKED
            else {}
        ),
        **(
            {"mailbox": mailbox.email, "delegate": delegate.get_username()}
            if mailbox is not None
            else {}
        ),
        **({"channel": channel} if channel else {}),
    }


def certificate_issue(
    *,
    template: CertificateTemplate,
    owner: User,
    public_key: keys.PublicKey,
    actor: Actor = None,
    source_address: str | None = None,
    supersedes: Certificate | None = None,
    address_checked: bool = False,
    channel: str = "",
    fulfils: CertificateRequest | None = None,
) -> Certificate:
    """Issue for a key the requester holds (from a checked CSR). ``address_checked``:
    the caller's transaction found no shared mailbox with the owner's address.
    ``channel``: the protocol the request came by, when not the web or the REST API
    (``est``), named in the audit event. ``fulfils``: the new request this answers, not
    yet stored: it is stored ISSUED with the certificate."""
    if not template.allow_csr:
        raise PolicyViolation(
            _("%(template)s does not accept a CSR; the portal generates the key."),
            params={"template": template.name},
        )
    return _issue(
        template=template,
        owner=owner,
        public_key=public_key,
        actor=actor,
        source_address=source_address,
        supersedes=supersedes,
        address_checked=address_checked,
        channel=channel,
        fulfils=fulfils,
    )


def _check_server_key(
    template: CertificateTemplate, key_algorithm: keys.KeyAlgorithm, *, field: str | None = None
) -> None:
    """The template issues keys made by the portal, of this algorithm: asked when the
    request is made, again when the key is made (the template may have changed between)."""
    if not template.allow_server_key:
        raise PolicyViolation(
            _("%(template)s needs your own key: upload a CSR."),
            params={"template": template.name},
            field=field,
        )
    if key_algorithm not in template.key_algorithms:
        raise PolicyViolation(
            _("%(template)s does not allow %(algorithm)s keys."),
            params={"template": template.name, "algorithm": key_algorithm.label},
            field=field,
        )


# The password and the new key stay out of error reports, here and in the frames below
# (Django applies the nearest decorated caller's list to them; pkcs12's names are its own).
@sensitive_variables()
def certificate_issue_with_server_key(
    *,
    template: CertificateTemplate,
    owner: User,
    key_algorithm: keys.KeyAlgorithm,
    pkcs12_password: str,
    pkcs12_format: pkcs12.Pkcs12Format = pkcs12.Pkcs12Format.MODERN,
    actor: Actor = None,
    source_address: str | None = None,
    supersedes: Certificate | None = None,
    mailbox: SharedMailbox | None = None,
) -> tuple[Certificate, bytes]:
    """Generate the key here; it leaves once, inside the password-protected PKCS#12."""
    _check_server_key(template, key_algorithm)
    if not pkcs12_password:
        raise PolicyViolation(_("A PKCS#12 password is required."), field="pkcs12_password")
    private_key = keys.generate_private_key(key_algorithm)
    certificate = _issue(
        template=template,
        owner=owner,
        public_key=private_key.public_key(),
        actor=actor,
        source_address=source_address,
        private_key=private_key,
        supersedes=supersedes,
        mailbox=mailbox,
    )
    chain = [ca.certificate for ca in certificate.ca.chain()]
    bundle = pkcs12.export_pkcs12(
        key=private_key,
        certificate=certificate.certificate,
        chain=chain,
        password=pkcs12_password,
        friendly_name=f"{certificate.common_name} ({template.name})",
        fmt=pkcs12_format,
    )
    return certificate, bundle


@sensitive_variables()  # as certificate_issue_with_server_key: cms holds the key
def _key_archive(
    *,
    certificate: Certificate,
    private_key: keys.PrivateKey,
    agents: list[KeyRecoveryAgent],
    actor: Actor,
    detail: dict[str, Any] | None = None,
) -> ArchivedKey:
    # The agents were read before signing; one may have been deactivated since. Those still
    # usable are share-locked until the commit, so a deactivation waits for this archive
    # (and counts it), and no archive goes to an agent deactivated meanwhile.
    still_usable = set(usable_agents_locked([agent.pk for agent in agents]))
    agents = [agent for agent in agents if agent.pk in still_usable]
    if not agents:
        raise ConfigurationError(
            _(
                "The key recovery agents were deactivated while this certificate was being "
                "issued, so it was not issued: an encryption key must be archived first."
            )
        )
    envelope = cms.archive_private_key(private_key, [agent.certificate for agent in agents])
    archived = ArchivedKey.objects.create(certificate=certificate, envelope=envelope)
    archived.recipients.set(agents)
    audit_record(
        action="key.archive",
        actor=actor,
        target=archived,
        detail={"agents": [agent.fingerprint_sha256 for agent in agents], **(detail or {})},
    )
    return archived


# --- revocation and CRLs --------------------------------------------------------------


def certificate_revoke(
    *,
    certificate: Certificate,
    reason: str | None,
    actor: Actor = None,
    invalidity_date: datetime | None = None,
    source_address: str | None = None,
) -> Certificate:
    """Commit the revocation, then queue the CRL: fast whatever the CRL's size.

    The holder revokes their own certificates, an RA officer those of the people their
    officer scope covers (certificate_revoke_check); commands, tasks and the leavers' run
    act as the system (``actor=None``). The holder is told by e-mail.
    """
    certificate_revoke_check(actor, certificate, source_address=source_address)
    with transaction.atomic():
        if reason == Certificate.RevocationReasonChoice.KEY_COMPROMISE and certificate.spki_sha256:
            # The key's row first, before any other lock (the audit chain's head included),
            # as issuance takes it: an issuance that claimed the key commits before this
            # goes on, and its certificate is revoked below; one that comes later finds the
            # key compromised.
            KeyIdentity.objects.update_or_create(
                spki_sha256=certificate.spki_sha256, defaults={"compromised": True}
            )
            # Then every certificate row this revokes or gives the reason keyCompromise,
            # in id order, before the audit chain's head: a single revocation takes its
            # row, then the head, so taking the head first and a second row after it
            # deadlocked with one.
            changed = lock_in_order(
                Certificate.objects.filter(
                    Q(pk=certificate.pk)
                    | (
                        Q(spki_sha256=certificate.spki_sha256)
                        & ~Q(revocation_reason=Certificate.RevocationReasonChoice.KEY_COMPROMISE)
                    )
                )
            )
            # And the CRL entries of those already revoked, queued again with the new
            # reason: a publisher marks entries (their rows), then takes the head.
            lock_in_order(CrlEntry.objects.filter(pk__in=changed))
        revoked = _revoke(
            certificate=certificate,
            reason=reason,
            actor=actor,
            invalidity_date=invalidity_date,
            source_address=source_address,
        )
        same_key = _revoke_same_key(
            revoked, actor=actor, invalidity_date=invalidity_date, source_address=source_address
        )
        # The caller's object (with what it already loaded: owner, CA) now shows the state.
        for field in (
            "status",
            "revoked_at",
            "revocation_reason",
            "invalidity_date",
            "queued_for_crl_at",
        ):
            setattr(certificate, field, getattr(revoked, field))
        from enrollment.notifications import certificate_revoked

        for told in (certificate, *same_key):
            certificate_revoked(told, actor=actor)
    return certificate


OUT_OF_SCOPE_CERTIFICATE = _(
    "This certificate is outside the people your officer scope covers: an officer whose "
    "scope covers its holder revokes it."
)


def certificate_revoke_check(
    actor: Actor, certificate: Certificate, *, source_address: str | None = None
) -> None:
    """NotPermitted unless ``actor`` may revoke it: the system (None), its holder (scope or
    not: one's own certificates stay one's own), an RA officer whose Reach covers it (a
    shared mailbox's, or one held by nobody, only an officer who acts for everyone). The
    pages and the API ask it before their forms, certificate_revoke before any change: a
    refusal is audited once, where it is made (access_refusal_record)."""
    from enrollment.permissions import NOT_AN_OFFICER, OUT_OF_SCOPE, is_ra_officer

    if actor is None or not actor.is_authenticated or may_hold(actor, certificate):
        return
    with access_refusals_recorded(
        actor=actor,
        attempted="certificate.revoke",
        target=certificate,
        source_address=source_address,
    ):
        if not is_ra_officer(actor):
            raise NotPermitted(
                _("You can only revoke your own certificates."), refusal=NOT_AN_OFFICER
            )
        if not reach_of(actor).covers_certificate(certificate):
            # Said without naming whose: the officer may not see who holds it.
            raise NotPermitted(OUT_OF_SCOPE_CERTIFICATE, refusal=OUT_OF_SCOPE)


def lock_in_order(rows: QuerySet[Any]) -> list[int]:
    """Lock these rows (certificates, CRL entries) in id order, in the caller's
    transaction: what revokes several takes all their rows before the audit chain's head,
    as one revocation does, so two never wait for each other. Their ids, in that order."""
    return list(rows.select_for_update().order_by("pk").values_list("pk", flat=True))


def _revoke_same_key(
    revoked: Certificate,
    *,
    actor: Actor,
    invalidity_date: datetime | None,
    source_address: str | None,
) -> list[Certificate]:
    """A compromised key's other valid certificates are revoked with it (S/MIME BR 4.9.1.1),
    and those already revoked for another reason (superseded, a leaver's) get the reason
    keyCompromise, as the reported one would (_now_key_compromise): a relying party
    checking an old signature made with the key learns from their CRL entries that the
    key leaked, not only that they were replaced.

    Rare, so no index of its own: at a million certificates the lookup reads the table.
    """
    compromised = Certificate.RevocationReasonChoice.KEY_COMPROMISE
    if revoked.revocation_reason != compromised or not revoked.spki_sha256:
        return []
    others = (
        Certificate.objects.filter(spki_sha256=revoked.spki_sha256)
        .exclude(revocation_reason=compromised)
        # An imported certificate of the key too: recorded as revoked here (no CRL entry,
        # the old CA's CRL and OCSP answer for it), so the directory and LDAP drop it.
        .exclude(pk=revoked.pk)
        .select_related("owner")
        .order_by("pk")
    )
    return [
        _revoke(
            certificate=other,
            reason=compromised,
            actor=actor,
            invalidity_date=invalidity_date,
            source_address=source_address,
            same_key_as=revoked,
        )
        for other in others
    ]


IMPORTED_RECORDED = _(
    "The revocation is recorded here: the portal no longer offers this certificate in the "
    "directory or LDAP. %(ca)s issued it, and only its CRL and OCSP tell mail clients: also "
    "revoke it at %(ca)s."
)
IMPORTED_CA_NO_CRL = _(
    "%(ca)s is another CA whose certificates were imported: the portal signs no CRL for it."
)


def imported_issuer(certificate: Certificate) -> str | None:
    """The old CA's name if another CA issued this certificate (it was imported), else None.

    The portal records such a revocation but lists it on no CRL and answers no OCSP for it:
    the old CA does, so the holder or officer must revoke it there too."""
    ca = (
        CertificateAuthority.objects.filter(pk=certificate.ca_id, is_imported=True)
        .only("name")
        .first()
    )
    return ca.name if ca is not None else None


def imported_revocation_note(certificate: Certificate) -> str | None:
    """What to tell whoever revoked an imported certificate (recorded here only), or None."""
    name = imported_issuer(certificate)
    return str(_worded(IMPORTED_RECORDED, ca=name)) if name is not None else None


# S/MIME BR 6.3.2: a subscriber certificate is valid for at most 825 days.
EARLIEST_INVALIDITY = timedelta(days=825)


def invalidity_date_check(
    invalidity_date: datetime | None, *, not_before: datetime, now: datetime | None = None
) -> None:
    """PolicyViolation (on ``invalidity_date``) if a revocation of a certificate valid from
    ``not_before`` would refuse this date. Also for a caller that checks a whole selection
    before handing it to a task (the admin's bulk revocation), against its latest start."""
    if invalidity_date is None:
        return
    if invalidity_date > (now or timezone.now()):
        raise PolicyViolation(
            _("The invalidity date cannot be in the future."), field="invalidity_date"
        )
    if invalidity_date < not_before - EARLIEST_INVALIDITY:
        # Published on every CRL (RFC 5280 5.3.2). A key may have leaked before this
        # certificate (a CSR's key is older), but a date more than a certificate's longest
        # life before it says no more than "from its start": year 1 is a typo.
        raise PolicyViolation(
            _(
                "The invalidity date cannot be more than %(days)d days before the "
                "certificate became valid (%(start)s UTC)."
            ),
            params={"days": EARLIEST_INVALIDITY.days, "start": f"{not_before:%Y-%m-%d %H:%M}"},
            field="invalidity_date",
        )


def _revoke(
    *,
    certificate: Certificate,
    reason: str | None,
    actor: Actor,
    invalidity_date: datetime | None,
    source_address: str | None,
    same_key_as: Certificate | None = None,
    revoked_at: datetime | None = None,
    detail: dict[str, Any] | None = None,
    queue_crl: bool = True,
) -> Certificate:
    """Revoke inside the caller's transaction; the CRL is queued for after its commit.
    ``revoked_at`` and ``queue_crl`` are for a revocation published before a restore, put
    back by a caller that publishes the CRL itself (enrollment.restore)."""
    if reason in ("", "unspecified"):
        reason = None
    if reason is not None and reason not in Certificate.RevocationReasonChoice.values:
        raise PolicyViolation(
            _("%(reason)s is not a revocation reason we accept."),
            params={"reason": repr(reason)},
            field="reason",
        )
    now = timezone.now()
    invalidity_date_check(invalidity_date, not_before=certificate.not_before, now=now)
    # Another CA's certificate: recorded as revoked here (the directory and LDAP drop it),
    # but its CRL and OCSP are the old CA's: no CRL entry, no CRL to publish.
    old_issuer = imported_issuer(certificate)
    locked = Certificate.objects.select_for_update().get(pk=certificate.pk)
    if locked.status == Certificate.Status.REVOKED:
        compromised = Certificate.RevocationReasonChoice.KEY_COMPROMISE
        if reason != compromised or locked.revocation_reason == compromised:
            raise InvalidState(_("This certificate is already revoked."))
        return _now_key_compromise(
            locked,
            actor=actor,
            invalidity_date=invalidity_date,
            source_address=source_address,
            old_issuer=old_issuer,
            queue_crl=queue_crl,
            same_key_as=same_key_as,
        )
    locked.status = Certificate.Status.REVOKED
    locked.revoked_at = revoked_at or now
    locked.revocation_reason = reason or ""
    locked.invalidity_date = invalidity_date
    # Now, even when put back with an earlier revoked_at: its CRL wait starts here.
    locked.queued_for_crl_at = now if old_issuer is None else None
    locked.save(
        update_fields=[
            "status",
            "revoked_at",
            "revocation_reason",
            "invalidity_date",
            "queued_for_crl_at",
        ]
    )
    if old_issuer is None:
        _crl_entry_create(locked)
    _revocation_recorded(
        locked,
        actor=actor,
        source_address=source_address,
        old_issuer=old_issuer,
        queue_crl=queue_crl,
        detail={
            "reason": reason or "",
            "serial": locked.serial,
            **({"same_key_as": same_key_as.serial} if same_key_as is not None else {}),
        },
        extra=detail,
    )
    return locked


def _revocation_recorded(
    locked: Certificate,
    *,
    actor: Actor,
    source_address: str | None,
    old_issuer: str | None,
    queue_crl: bool,
    detail: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Audit a revocation (or its reason become keyCompromise) and queue its CRL and LDAP
    work for after the commit; an imported certificate's CRL is its old CA's."""
    audit_record(
        action="certificate.revoke",
        actor=actor,
        target=locked,
        source_address=source_address,
        detail={
            **detail,
            **({"recorded_only": True, "issuer": old_issuer} if old_issuer else {}),
            **(extra or {}),
        },
    )
    if queue_crl and old_issuer is None:
        from enrollment.tasks import crl_publish_on_commit

        crl_publish_on_commit(locked.ca_id)
    ldap_publish.publish_on_commit(locked.owner_id)


def _now_key_compromise(
    locked: Certificate,
    *,
    actor: Actor,
    invalidity_date: datetime | None,
    source_address: str | None,
    old_issuer: str | None,
    queue_crl: bool,
    same_key_as: Certificate | None = None,
) -> Certificate:
    """A certificate revoked for another reason whose key is now known compromised: its
    reason becomes keyCompromise (RFC 5280 5.3.1 lets a reason change; S/MIME BR 7.2.2
    wants the most appropriate one), its CRL entry says so on the next CRL, and the
    caller marks the key and revokes (or, if revoked, upgrades) its other certificates.
    Refusing it, as before, left a leaver's or a superseded certificate's leaked key
    certifiable again."""
    previous = locked.revocation_reason or "unspecified"
    locked.revocation_reason = Certificate.RevocationReasonChoice.KEY_COMPROMISE
    if invalidity_date is not None:
        locked.invalidity_date = invalidity_date
    if old_issuer is None:
        # Its wait for a CRL starts now, not at revoked_at: /health/ would otherwise count
        # an old revocation as waiting for days. revoked_at, the entry's revocationDate,
        # stays (RFC 5280 5.1.2.6: when it was revoked, not when the reason changed).
        locked.queued_for_crl_at = timezone.now()
    locked.save(update_fields=["revocation_reason", "invalidity_date", "queued_for_crl_at"])
    if old_issuer is None:
        # Published again, with its new reason: an entry no CRL lists yet is what makes
        # the watchdog publish if the queued task is lost.
        CrlEntry.objects.update_or_create(
            certificate=locked,
            defaults={
                "ca_id": locked.ca_id,
                "not_after": locked.not_after,
                "der": _crl_entry_der(locked),
                "first_crl_number": None,
            },
        )
    _revocation_recorded(
        locked,
        actor=actor,
        source_address=source_address,
        old_issuer=old_issuer,
        queue_crl=queue_crl,
        detail={
            "reason": Certificate.RevocationReasonChoice.KEY_COMPROMISE.value,
            "serial": locked.serial,
            "previous_reason": previous,
            **({"same_key_as": same_key_as.serial} if same_key_as is not None else {}),
        },
    )
    return locked


def _crl_entry_create(certificate: Certificate) -> CrlEntry:
    """Encode the revoked certificate's CRL entry once, in the revoking transaction."""
    return CrlEntry.objects.create(
        certificate=certificate,
        ca_id=certificate.ca_id,
        not_after=certificate.not_after,
        der=_crl_entry_der(certificate),
    )


def _crl_entry_der(certificate: Certificate) -> bytes:
    """The revoked certificate's CRL entry (RFC 5280 5.1.2.6).

    The root's CRL lists CA certificates, so there every entry needs a reason (S/MIME BR
    7.2.2); certificateHold is never among the reasons we accept.
    """
    reason = certificate.revocation_reason or None
    # revoked_certificate_has_revocation_time: the database says so.
    assert certificate.revoked_at is not None
    is_root = (
        reason is None  # only matters then
        and CertificateAuthority.objects.filter(pk=certificate.ca_id, parent__isnull=True).exists()
    )
    try:
        return crl_fast.encode_entry(
            RevokedEntry(
                serial_number=int(certificate.serial, 16),
                revocation_date=certificate.revoked_at,
                reason=RevocationReason(reason) if reason else None,
                invalidity_date=certificate.invalidity_date,
            ),
            reason_required=is_root,
        )
    except X509Error as exc:
        raise PolicyViolation.from_x509(exc, field="reason") from exc


def crl_entries_repair(*, ca: CertificateAuthority) -> int:
    """Encode entries for revoked certificates that have none (rows revoked outside _revoke).

    Cheap when nothing is missing (two counts); the scheduled run calls it, so even a
    revocation written behind the services' back reaches the CRL within a day.
    """
    if ca.is_imported:  # its revocations are recorded here only: the old CA lists them
        return 0
    revoked = Certificate.objects.filter(ca=ca).revoked()
    if revoked.count() == CrlEntry.objects.filter(ca=ca).count():
        return 0
    missing = list(revoked.filter(crl_entry__isnull=True))
    with transaction.atomic():
        # Queued now: their wait for a CRL starts here, whenever they were revoked.
        revoked.filter(crl_entry__isnull=True).update(queued_for_crl_at=timezone.now())
        for certificate in missing:
            _crl_entry_create(certificate)
    if missing:
        logger.warning("Encoded %d missing CRL entries for %s.", len(missing), ca)
    return len(missing)


def _crl_entry_bytes(
    ca: CertificateAuthority, previous: RevocationList | None
) -> tuple[int, bytes]:
    """Every stored entry of the CA, concatenated: (count, bytes).

    Entries stay until one CRL after their certificate expires (RFC 5280 3.3): a
    certificate that expired before the previous CRL was made is dropped, unless no CRL
    has listed it yet (revoked after it expired). A revocation, once committed, is on
    every CRL published after it until then: at least on the next one.
    """
    if connection.vendor == "postgresql":
        return _crl_entry_bytes_postgresql(ca, previous)
    entries = CrlEntry.objects.filter(ca=ca)
    if previous is not None:
        entries = entries.filter(
            Q(not_after__gte=previous.this_update) | Q(first_crl_number__isnull=True)
        )
    chunks = [bytes(der) for der in entries.values_list("der", flat=True).iterator(10_000)]
    return len(chunks), b"".join(chunks)


def _crl_entry_bytes_postgresql(
    ca: CertificateAuthority, previous: RevocationList | None
) -> tuple[int, bytes]:
    """PostgreSQL concatenates the entries itself and sends one binary value.

    One value instead of a row per entry, in binary instead of hex: ~0.3 s for a million
    entries, in this transaction, under the CA lock (enrollment/binary.py). The entries
    not yet on any CRL that already expired are a second, disjoint range read through the
    partial index of unpublished entries (a few rows), not an OR that spoils the plan.
    """
    table = connection.ops.quote_name(CrlEntry._meta.db_table)
    if previous is None:
        sql = f"SELECT der FROM {table} WHERE ca_id = %s"
        params: list[object] = [ca.pk]
    else:
        sql = (
            f"SELECT der FROM {table} WHERE ca_id = %s AND not_after >= %s "
            f"UNION ALL SELECT der FROM {table} "
            "WHERE ca_id = %s AND first_crl_number IS NULL AND not_after < %s"
        )
        params = [ca.pk, previous.this_update, ca.pk, previous.this_update]
    count, data = binary.fetch_one(
        f"SELECT count(*), string_agg(der, ''::bytea) FROM ({sql}) AS listed", params
    )
    return count, bytes(data or b"")


def _lock_ca(ca: CertificateAuthority, *, wait: bool = True) -> CertificateAuthority:
    """Lock the CA row for one publisher at a time; Busy if ``wait`` is off and it is held.

    FOR NO KEY UPDATE, not FOR UPDATE: inserting a row that references the CA (a new
    certificate, a CRL entry) takes FOR KEY SHARE, which FOR UPDATE would block for the
    whole CRL build. Publishers still exclude each other.
    """
    if wait:
        return CertificateAuthority.objects.select_for_update(no_key=True).get(pk=ca.pk)
    locked = (
        CertificateAuthority.objects.select_for_update(no_key=True, skip_locked=True)
        .filter(pk=ca.pk)
        .first()
    )
    if locked is None:
        raise Busy(_("Another process is publishing the CRL of %(ca)s."), params={"ca": ca.name})
    return locked


def _latest_crl_facts(ca: CertificateAuthority) -> RevocationList | None:
    return (
        RevocationList.objects.filter(ca=ca)
        .newest_first()
        .only("ca_id", "number", "this_update", "next_update")
        .first()
    )


@dataclass
class CrlAttempt:
    """What one CRL publication attempt saw once it held the CA's lock, for
    crl_failure_record() should it fail. ``newest_crl_id``: newest_crl_id() read under
    that lock, in the attempt's transaction; None until it holds the lock."""

    newest_crl_id: int | None = None

    def saw(self, locked: CertificateAuthority) -> None:
        self.newest_crl_id = newest_crl_id(locked)


def crl_publish(
    *,
    ca: CertificateAuthority,
    actor: Actor = None,
    offline_key: keystore.OfflineKey | None = None,
    validity: timedelta | None = None,
    source_address: str | None = None,
    attempt: CrlAttempt | None = None,
) -> RevocationList:
    """Sign and store the CA's next CRL; numbers strictly increase per CA.

    The CA row is locked for the whole build, so concurrent publishers queue behind each
    other and the later one always sees every revocation committed before it.
    ``attempt``: filled in under the lock, for crl_failure_record() if this fails.
    """
    with transaction.atomic():
        locked = _lock_ca(ca)
        if attempt is not None:
            attempt.saw(locked)
        return _crl_publish_locked(
            locked, _latest_crl_facts(locked), actor=actor, offline_key=offline_key,
            validity=validity, source_address=source_address,
        )  # fmt: skip


def crl_publish_if_due(
    *,
    ca: CertificateAuthority,
    overlap: timedelta = timedelta(0),
    pending_for: timedelta | None = timedelta(0),
    actor: Actor = None,
    wait: bool = True,
    attempt: CrlAttempt | None = None,
) -> RevocationList | None:
    """Publish only if needed; None if the current CRL is still good.

    Needed: no CRL yet; the CRL ends within ``overlap`` (or has ended); or a revocation
    committed at least ``pending_for`` ago is on no CRL (None: do not look). The check runs
    under the CA lock, so of a burst of queued tasks the first publishes once for every
    revocation committed so far and the rest find nothing to do. ``wait=False`` (a web
    request) raises Busy instead of queueing behind a publisher that holds the lock.
    ``attempt``: filled in under the lock, for crl_failure_record() if this fails.
    """
    with transaction.atomic():
        locked = _lock_ca(ca, wait=wait)
        if attempt is not None:
            attempt.saw(locked)
        previous = _latest_crl_facts(locked)
        now = timezone.now()
        due = previous is None or previous.next_update - now <= overlap
        if not due and pending_for is not None:
            waiting = CrlEntry.objects.filter(ca=locked, first_crl_number__isnull=True)
            if pending_for > timedelta(0):
                # Never with 0: a clock behind the web server's would skip a new revocation.
                # Since queued (a keyCompromise upgrade queues an old revocation anew).
                waiting = waiting.alias(queued=CRL_QUEUED_AT).filter(queued__lte=now - pending_for)
            due = waiting.exists()
        if not due:
            return None
        return _crl_publish_locked(locked, previous, actor=actor)


def _crl_publish_locked(
    locked: CertificateAuthority,
    previous: RevocationList | None,
    *,
    actor: Actor,
    offline_key: keystore.OfflineKey | None = None,
    validity: timedelta | None = None,
    number: int | None = None,
    source_address: str | None = None,
) -> RevocationList:
    """``number`` skips ahead of the next one (enrollment.restore); never back."""
    if locked.is_imported:
        raise InvalidState(IMPORTED_CA_NO_CRL, params={"ca": locked.name})
    following = (previous.number + 1) if previous else 1
    if number is None or number < following:
        number = following
    this_update = timezone.now().replace(microsecond=0)
    if previous is not None and previous.this_update > this_update:
        this_update = previous.this_update  # a host with a slow clock never goes backwards
    validity = validity or timedelta(days=locked.crl_validity_days)
    _check_crl_validity(locked, validity)
    next_update = this_update + validity
    # Before the entries: a key that cannot be opened fails without reading them all.
    sign = keystore.crl_signer(locked, offline_key=offline_key)
    # Read the unpublished entries before the CRL's own read: all of them are in it (even
    # those that expired before the previous CRL), so each is marked on a CRL listing it.
    # Locked (in id order, as a keyCompromise takes them) until this CRL commits: one
    # queued again meanwhile with a new reason would be marked by a CRL that read its old
    # bytes, and no CRL would be due for it; it waits, and is queued for the next.
    unpublished = lock_in_order(CrlEntry.objects.filter(ca=locked, first_crl_number__isnull=True))
    count, revoked = _crl_entry_bytes(locked, previous)
    try:
        der = sign(
            revoked=revoked, crl_number=number, this_update=this_update, next_update=next_update
        )
    except X509Error as exc:
        raise PolicyViolation.from_x509(exc) from exc
    del revoked
    revocation_list = RevocationList.objects.create(
        ca=locked,
        number=number,
        this_update=this_update,
        next_update=next_update,
        entries=count,
        der=b"",
    )
    binary.write(RevocationList, revocation_list.pk, "der", der)
    revocation_list.der = der
    # Superseded CRLs are not served; their numbers and sizes stay in the audit trail.
    RevocationList.objects.filter(ca=locked, number__lte=number - CRL_HISTORY).delete()
    for start in range(0, len(unpublished), 10_000):
        CrlEntry.objects.filter(pk__in=unpublished[start : start + 10_000]).update(
            first_crl_number=number
        )
    if locked.crl_failed_at is not None:
        CertificateAuthority.objects.filter(pk=locked.pk).update(
            crl_failed_at=None, crl_error_code="", crl_error=""
        )
    audit_record(
        action="crl.publish",
        actor=actor,
        target=revocation_list,
        source_address=source_address,
        detail={"number": number, "entries": count},
        outcome=AuditEvent.Outcome.SUCCESS,
    )
    return revocation_list


def newest_crl_id(ca: CertificateAuthority) -> int:
    """The id of the CA's newest stored CRL (0: none). Read by a CRL attempt under the
    CA's lock (CrlAttempt), for crl_failure_record(). Ids, not times: the hosts' clocks
    may differ."""
    newest = RevocationList.objects.filter(ca=ca).order_by("-pk").values_list("pk").first()
    return newest[0] if newest else 0


def crl_failure_record(
    *, ca: CertificateAuthority, error: BaseException, newest_before: int | None = None
) -> None:
    """Keep a failed CRL publication visible (health check, RA console) and audited.

    The next successful publication clears it. ``newest_before``: the newest CRL id the
    failed attempt saw under the CA's lock (CrlAttempt.newest_crl_id); None when it
    failed before taking the lock, or the caller does not know: the failure is shown.
    The attempt's transaction rolled back, freeing the CA's row, before this runs: a
    publisher waiting on that row may have published a CRL meanwhile, which read no
    failure to clear. Such a failure is audited but not shown, or /health/ would fail
    until the next publication with the newest CRL in place. A CRL committed before the
    attempt took the lock is one the attempt itself started from: read before the lock,
    ``newest_before`` would count it as newer and hide a failure nothing has made up for.
    """
    code = type(error).__name__
    message = getattr(error, "message", "") or f"{code}: {error}"
    logger.error("Publishing the CRL of %s failed: %s", ca, message, exc_info=error)
    with transaction.atomic():
        # The row first, as publishers take it; the check then sees what they committed.
        locked = _lock_ca(ca)
        superseded = newest_before is not None and (
            RevocationList.objects.filter(ca=locked, pk__gt=newest_before).exists()
        )
        if not superseded:
            CertificateAuthority.objects.filter(pk=ca.pk).update(
                crl_failed_at=timezone.now(), crl_error_code=code[:50], crl_error=message[:500]
            )
        audit_record(
            action="crl.publish",
            target=ca,
            outcome=AuditEvent.Outcome.FAILURE,
            detail={"error_code": code, "error": message[:500]},
        )


def _crl_validity_limit(ca: CertificateAuthority) -> timedelta:
    """S/MIME BR 4.9.7: 12 months for the root (CA certificates only), else 10 days."""
    return MAX_CA_CRL_VALIDITY if ca.parent_id is None else MAX_SUBSCRIBER_CRL_VALIDITY


def _check_crl_validity(ca: CertificateAuthority, validity: timedelta) -> None:
    limit = _crl_validity_limit(ca)
    if validity > limit:
        raise PolicyViolation(
            _(
                "%(ca)s: nextUpdate is %(validity)s after thisUpdate; for a root CA's CRL it "
                "may be at most %(limit)s (S/MIME BR 4.9.7)."
            )
            if ca.parent_id is None
            else _(
                "%(ca)s: nextUpdate is %(validity)s after thisUpdate; for a subscriber-issuing "
                "CA's CRL it may be at most %(limit)s (S/MIME BR 4.9.7)."
            ),
            params={"ca": ca.name, "validity": _days(validity), "limit": _days(limit)},
        )


def _days(span: timedelta) -> str:
    """The span in days (worded when read: plurals.days translates), else as timedelta
    prints it."""
    if span != timedelta(days=span.days):
        return str(span)
    return plurals.days_when_read(span.days)


def _ca_key_identifier(ca: CertificateAuthority) -> bytes:
    certificate = ca.certificate
    try:
        return certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


# S/MIME BR 7.2.2 (the CRLReasons table): the reasonCodes a CRL entry may carry. A root's
# CRL lists CA certificates, whose entries must carry one, and may say cACompromise.
_SUBSCRIBER_CRL_REASONS = frozenset(
    {
        x509.ReasonFlags.key_compromise,
        x509.ReasonFlags.affiliation_changed,
        x509.ReasonFlags.superseded,
        x509.ReasonFlags.cessation_of_operation,
        x509.ReasonFlags.privilege_withdrawn,
    }
)
_CA_CRL_REASONS = _SUBSCRIBER_CRL_REASONS | {x509.ReasonFlags.ca_compromise}


def _check_imported_reasons(
    ca: CertificateAuthority, imported: x509.CertificateRevocationList
) -> None:
    """Refuse a CRL whose entries our own builder could not have written for ``ca``."""
    lists_ca_certificates = ca.parent_id is None
    allowed = _CA_CRL_REASONS if lists_ca_certificates else _SUBSCRIBER_CRL_REASONS
    for entry in imported:
        serial = f"{entry.serial_number:x}"
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            if lists_ca_certificates:
                raise PolicyViolation(
                    _(
                        "The CRL's entry for serial %(serial)s has no reasonCode; an entry for "
                        "a CA certificate must say why it was revoked (S/MIME BR 7.2.2)."
                    ),
                    params={"serial": serial},
                ) from None
            continue
        if reason is x509.ReasonFlags.certificate_hold:
            raise PolicyViolation(
                _(
                    "The CRL puts serial %(serial)s on hold (certificateHold); certificates "
                    "here are revoked, never suspended (S/MIME BR 7.2.2)."
                ),
                params={"serial": serial},
            )
        if reason not in allowed:
            names = ", ".join(sorted(flag.value for flag in allowed))
            raise PolicyViolation(
                _(
                    "The CRL gives serial %(serial)s the reason %(reason)s, which %(ca)s's "
                    "CRL may not carry (S/MIME BR 7.2.2 allows %(allowed)s)."
                ),
                params={"serial": serial, "reason": reason.value, "ca": ca.name, "allowed": names},
            )


def crl_import(*, ca: CertificateAuthority, der: bytes, actor: Actor = None) -> RevocationList:
    """Store a CRL signed elsewhere (the offline root's, signed on an air-gapped machine).

    Refused unless it is ``ca``'s by name, key identifier and signature, numbered above the
    published one, current, within the S/MIME BR 4.9.7 interval for ``ca``, and with only
    the reason codes S/MIME BR 7.2.2 allows (a root's entries must all carry one).
    """
    imported, number = crl_verified(ca=ca, der=der)
    if imported.next_update_utc is None:
        raise PolicyViolation(_("The CRL has no nextUpdate."))
    if imported.next_update_utc <= imported.last_update_utc:
        raise PolicyViolation(_("The CRL's nextUpdate is not later than its thisUpdate."))
    _check_crl_validity(ca, imported.next_update_utc - imported.last_update_utc)
    _check_imported_reasons(ca, imported)
    if imported.next_update_utc <= timezone.now():
        raise PolicyViolation(
            _("The CRL expired at %(end)s UTC; publishing it would serve a stale list."),
            params={"end": f"{imported.next_update_utc:%Y-%m-%d %H:%M}"},
        )
    with transaction.atomic():
        locked = _lock_ca(ca)
        previous = _latest_crl_facts(locked)
        if previous is not None and number <= previous.number:
            raise InvalidState(
                _("CRL number %(number)d is not newer than the published number %(published)d."),
                params={"number": number, "published": previous.number},
            )
        if previous is not None and imported.last_update_utc < previous.this_update:
            # Served as the newest by its number, it would turn the clock back for every
            # relying party: a CRL never replaces a newer one.
            raise InvalidState(
                _(
                    "The CRL's thisUpdate (%(this_update)s UTC) is older than the published "
                    "CRL's (%(published)s UTC)."
                ),
                params={
                    "this_update": f"{imported.last_update_utc:%Y-%m-%d %H:%M}",
                    "published": f"{previous.this_update:%Y-%m-%d %H:%M}",
                },
            )
        revocation_list = _crl_store(locked, imported, number)
        audit_record(
            action="crl.import", actor=actor, target=revocation_list, detail={"number": number}
        )
    return revocation_list


def crl_verified(
    *, ca: CertificateAuthority, der: bytes
) -> tuple[x509.CertificateRevocationList, int]:
    """A CRL (DER or PEM) that ``ca`` signed, and its number: by name, key identifier and
    signature. Whether it is current or newer than ours is the caller's question."""
    try:
        imported = x509.load_der_x509_crl(der)
    except ValueError:
        try:
            imported = x509.load_pem_x509_crl(der)
        except ValueError as exc:
            raise PolicyViolation(_("The file is not a DER or PEM CRL.")) from exc
    if imported.issuer != ca.certificate.subject:
        raise PolicyViolation(_("The CRL was not issued by %(ca)s."), params={"ca": ca.name})
    issuer_key = ca.certificate.public_key()  # RSA or EC: the only keys a CA here has
    if not isinstance(issuer_key, keys.PublicKey) or not imported.is_signature_valid(issuer_key):
        raise PolicyViolation(
            _("The CRL's signature does not verify with %(ca)s's key."), params={"ca": ca.name}
        )
    try:
        aki = imported.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise PolicyViolation(_("The CRL has no authorityKeyIdentifier (RFC 5280 5.2.1).")) from exc
    if aki.key_identifier != _ca_key_identifier(ca):
        raise PolicyViolation(
            _(
                "The CRL's authorityKeyIdentifier does not name %(ca)s's key "
                "(RFC 5280 5.2.1: the key identifier of the CA's certificate)."
            ),
            params={"ca": ca.name},
        )
    try:
        number = imported.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound as exc:
        raise PolicyViolation(_("The CRL has no CRL number (RFC 5280 5.2.3).")) from exc
    if number > MAX_STORED_CRL_NUMBER:
        raise PolicyViolation(
            _("CRL number %(number)d is larger than the portal can store (at most %(maximum)d)."),
            params={"number": number, "maximum": MAX_STORED_CRL_NUMBER},
        )
    return imported, number


def _crl_store(
    locked: CertificateAuthority, crl: x509.CertificateRevocationList, number: int
) -> RevocationList:
    """Keep a CRL signed elsewhere (or before a restore) as the CA's newest."""
    next_update = crl.next_update_utc
    assert next_update is not None  # checked by the callers
    return RevocationList.objects.create(
        ca=locked,
        number=number,
        this_update=crl.last_update_utc,
        next_update=next_update,
        entries=len(crl),
        der=crl.public_bytes(Encoding.DER),
    )


# --- certificate requests (self-service enrolment) -------------------------------------


def _printable(text: str) -> str:
    """What a CSR asked for, escaped: a signed CSR may carry NUL, which PostgreSQL refuses."""
    return names.printable(text)


def _enrolment_counts(
    *, requester: User, template: CertificateTemplate, renewal_of: Certificate | None
) -> hotsql.EnrolmentCounts:
    now = timezone.now()
    return hotsql.enrolment_counts(
        requester_id=requester.pk,
        template_id=template.pk,
        since=now - timedelta(hours=1),
        now=now,
        excluding_certificate_id=renewal_of.pk if renewal_of is not None else None,
        address=account_email(requester),
    )


def _rate_limited() -> RateLimited:
    """The per-person hourly cap (PKIPORTAL_ENROLL_RATE_PER_HOUR), reached."""
    rate = settings.PKIPORTAL_ENROLL_RATE_PER_HOUR
    return RateLimited(
        ngettext_lazy(
            "You have made %(count)d request in the last hour; please try again later.",
            "You have made %(count)d requests in the last hour; please try again later.",
            rate,
        ),
        params={"count": rate},
    )


def _check_limits(counts: hotsql.EnrolmentCounts, template: CertificateTemplate) -> None:
    """Per-person caps that keep a script or a stolen session from flooding the CA."""
    if counts.recent_requests >= settings.PKIPORTAL_ENROLL_RATE_PER_HOUR:
        raise _rate_limited()
    cap = settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE
    if counts.valid_certificates + counts.open_requests >= cap:
        raise PolicyViolation(
            _(
                "You already have %(cap)d valid certificates or open requests for "
                "%(template)s; renew or revoke one instead."
            ),
            params={"cap": cap, "template": template.name},
            field="template",
        )


def request_submit(
    *,
    requester: User,
    template: CertificateTemplate,
    csr: bytes | str | None = None,
    key_algorithm: keys.KeyAlgorithm | None = None,
    renewal_of: Certificate | None = None,
    source_address: str | None = None,
    idempotency_key: str = "",
    mailbox: SharedMailbox | None = None,
    channel: str,
) -> CertificateRequest:
    """Record a request; fulfil a CSR at once when the template needs no approval.

    ``channel`` is how it came (CertificateRequest.Channel: the web views, the API and
    EST each say theirs), stored on the request. Required: a new way in that forgot it
    would otherwise store its requests as 'unknown', which reads as "made before the
    portal kept it". EST's audit events name it, and so does
    the issuance after an approval (``audited_channel``).

    With ``mailbox``, a delegate asks for a certificate of that shared mailbox: a
    portal-generated key of an archiving template only, under the mailbox's own cap.

    A portal-key request without approval comes back APPROVED: the caller then collects
    it with request_collect() in the same HTTP request, so the key is generated only
    when it can leave at once inside the PKCS#12.

    The locked way runs in a transaction (the caller's, which may go on to collect) that
    locks the requester's row as it counts: concurrent enrolments of one person wait for
    each other, so a script cannot pass the per-person caps by sending its requests in
    parallel. On PostgreSQL a CSR issued at once usually takes the unlocked way instead
    (_csr_issued_unlocked: two statements, which write only if nobody took that lock
    meanwhile); whatever it does not issue, the locked way decides.
    """
    if csr is not None and key_algorithm is None and renewal_of is None and mailbox is None:
        request = _csr_submit(
            requester=requester,
            template=template,
            csr=csr,
            source_address=source_address,
            idempotency_key=idempotency_key,
            channel=channel,
        )
        assert request is not None  # (only a slug can name no template)
        return request
    return _request_submit_locked(
        requester=requester,
        template=template,
        csr=csr,
        key_algorithm=key_algorithm,
        renewal_of=renewal_of,
        source_address=source_address,
        idempotency_key=idempotency_key,
        mailbox=mailbox,
        channel=channel,
    )


def csr_submit_named(
    *,
    requester: User,
    template_slug: str,
    csr: bytes | str,
    source_address: str | None = None,
    idempotency_key: str = "",
    channel: str,
) -> CertificateRequest | None:
    """request_submit() of a CSR for the template with this slug, as the API's body names
    it; None, having done nothing, when no template has that slug (the caller says so in
    its own words). On PostgreSQL the unlocked way's check reads the template with the
    rest: one statement fewer than reading it first."""
    return _csr_submit(
        requester=requester,
        template=template_slug,
        csr=csr,
        source_address=source_address,
        idempotency_key=idempotency_key,
        channel=channel,
    )


def _csr_submit(
    *,
    requester: User,
    template: CertificateTemplate | str,
    csr: bytes | str,
    source_address: str | None,
    idempotency_key: str,
    channel: str,
) -> CertificateRequest | None:
    """A new CSR request, not a renewal: the unlocked way, then whatever it leaves the
    locked way decides, on the template as the unlocked check read it (fresher than the
    caller's) or as given. None when ``template`` is a slug no template has."""
    request, read = _csr_issued_unlocked(
        requester=requester,
        template=template,
        csr=csr,
        source_address=source_address,
        idempotency_key=idempotency_key,
        channel=channel,
    )
    if request is not None:
        return request
    found: CertificateTemplate | None
    if read is not None:
        found = read
    elif isinstance(template, str):
        found = hotsql.template_by_slug(template)  # the check did not run, or found none
        if found is None:
            return None
    else:
        found = template
    # The locked way in a transaction of its own, or a savepoint of the caller's: a
    # failure leaves a caller's transaction usable, as when callers opened one.
    with transaction.atomic():
        return _request_submit_locked(
            requester=requester,
            template=found,
            csr=csr,
            key_algorithm=None,
            renewal_of=None,
            source_address=source_address,
            idempotency_key=idempotency_key,
            mailbox=None,
            channel=channel,
        )


@_in_a_transaction
def _request_submit_locked(
    *,
    requester: User,
    template: CertificateTemplate,
    csr: bytes | str | None,
    key_algorithm: keys.KeyAlgorithm | None,
    renewal_of: Certificate | None,
    source_address: str | None,
    idempotency_key: str,
    mailbox: SharedMailbox | None,
    channel: str,
) -> CertificateRequest:
    """request_submit(), the requester's row locked as it counts (_enrolment_counts)."""
    from enrollment.permissions import may_use_template

    if channel not in CHANNELS:
        raise ValueError(f"Unknown request channel {channel!r}.")  # a programming error
    # Who may use the template and the per-person limits are read together, up front.
    counts = _enrolment_counts(requester=requester, template=template, renewal_of=renewal_of)
    if not may_use_template(requester, template, open_to_user=counts.open_to_requester):
        raise NotPermitted(
            _("You may not use the template %(template)s."),
            params={"template": template.name},
            field="template",
        )
    if (csr is None) == (key_algorithm is None):
        raise PolicyViolation(_("Give either a CSR or a key algorithm, not both."), field="csr")
    if mailbox is not None:
        mailbox = _mailbox_for_delegate(mailbox, requester)
        if csr is not None:
            raise PolicyViolation(MAILBOX_NEEDS_SERVER_KEY, field="csr")
        _check_mailbox_template(template)
    if renewal_of is not None:
        if mailbox is not None:
            renews_own = renewal_of.mailbox_id == mailbox.pk
        else:
            renews_own = renewal_of.owner_id == requester.pk
        if not renews_own:
            raise NotPermitted(_("You can only renew your own certificates."))
        if renewal_of.template_id != template.pk:
            raise PolicyViolation(_("A renewal uses the same template."), field="template")
        if not Certificate.objects.valid().filter(pk=renewal_of.pk).exists():
            raise InvalidState(
                _("Only a valid certificate can be renewed; request a new one instead.")
            )
        if CertificateRequest.objects.filter(
            renewal_of=renewal_of, state__in=OPEN_REQUEST_STATES
        ).exists():
            # Each would supersede the same certificate: only one can ever be issued.
            raise InvalidState(_("This certificate already has a renewal waiting."))
    if mailbox is not None:
        subject_for_mailbox(mailbox)
    else:
        # Fail early when the account cannot be named in a certificate (no address, one
        # outside the domains first: an empty one is "taken" by every account without);
        # whether a shared mailbox or another account has it came with the counts.
        subject_for(requester, address_checked=True)
        if counts.address_taken:
            raise PolicyViolation(
                address_taken(account_email(requester), requester.pk) or "", field="email"
            )
    parsed = None
    if csr is not None:
        if not template.allow_csr:
            raise PolicyViolation(
                _("%(template)s does not accept a CSR: the portal generates and archives the key."),
                params={"template": template.name},
                field="csr",
            )
        try:
            parsed = parse_csr(csr, allowed_key_algorithms=template.key_algorithms)
        except X509Error as exc:
            raise PolicyViolation.from_x509(exc, field="csr") from exc
        if renewal_of is not None and keys.spki_sha256(parsed.public_key) == renewal_of.spki_sha256:
            raise PolicyViolation(
                _(
                    "A renewal needs a new key: this request carries the key of the certificate "
                    "it renews. Make a new key and request again."
                ),
                field="csr",
            )
    else:
        assert key_algorithm is not None
        _check_server_key(template, key_algorithm, field="key_algorithm")
    if template.archive_key and not _active_agents():
        raise ConfigurationError(
            _(
                "No valid key recovery agent is configured, so %(template)s cannot issue "
                "right now: encryption keys must be archived. Please tell your administrator."
            ),
            params={"template": template.name},
        )
    if mailbox is not None:
        _check_mailbox_limits(counts, template, mailbox, renewal_of=renewal_of)
    else:
        _check_limits(counts, template)

    # Without approval the request is approved as it is recorded: one write, not two. A
    # CSR is then fulfilled in the same transaction: if issuing fails, nothing remains.
    approved = not template.requires_approval
    if parsed is not None and not approved and _key_compromised(parsed.public_key):
        # Issued at once, the key's claim refuses it (_issue); waiting for approval, it
        # would only reach an officer's queue to fail there.
        raise PolicyViolation(COMPROMISED_KEY, field="csr")
    with audit.deferred():
        request = _new_request(
            requester=requester,
            template=template,
            parsed=parsed,
            key_algorithm=key_algorithm,
            approved=approved,
            renewal_of=renewal_of,
            mailbox=mailbox,
            source_address=source_address,
            idempotency_key=idempotency_key,
            channel=channel,
        )
        audited = audited_channel(request)
        audit_record(  # named when the block ends, by then stored
            action="request.submit",
            actor=requester,
            target=request,
            source_address=source_address,
            detail=_submit_detail(request, renewal_of=renewal_of, mailbox=mailbox),
        )
        if parsed is not None and approved:
            # Issued first, so the request is stored once, already issued, in the
            # certificate's statement.
            certificate_issue(
                template=template,
                owner=requester,
                public_key=parsed.public_key,
                actor=requester,
                source_address=source_address,
                supersedes=renewal_of,
                address_checked=True,  # with the counts, above
                channel=audited,
                fulfils=request,
            )
        else:
            hotsql.insert(request)
    if not approved:
        from enrollment.ra_notifications import request_awaits_approval

        request_awaits_approval(request)
    return request


def _issues_csrs_at_once(template: CertificateTemplate) -> bool:
    """The template issues a CSR as it comes: what the unlocked way takes."""
    return (
        template.is_active
        and template.allow_csr
        and not template.requires_approval
        and not template.archive_key
    )


def _csr_issued_unlocked(
    *,
    requester: User,
    template: CertificateTemplate | str,
    csr: bytes | str,
    source_address: str | None,
    idempotency_key: str,
    channel: str,
) -> tuple[CertificateRequest | None, CertificateTemplate | None]:
    """PostgreSQL: issue a CSR in two statements; else say so, for the locked way.

    The locked way holds its requester's row from BEGIN to COMMIT across seven
    statements. Here hotsql.enrolment_check() reads what the locked way reads, without a
    lock; every check the locked way makes is made on it; and hotsql.issue_checked()
    writes the request, the certificate and their events in one statement, only if
    nobody has taken this person's lock since the check (the lock moves the row's
    version), so the counts it decided on are still the counts. Anything else, every
    refusal included, is left to the locked way, which decides and words it. A
    certificate signed here and then not stored (one person's own requests racing) was
    never sent; the log says so.

    ``template`` is the template, or its slug (as the API's body names it): the check
    reads the template's row either way, and everything after it uses that row. Returns
    the request if issued, else None; and the template as the check read it (None if no
    template has that slug, or the check did not run).
    """
    from enrollment.permissions import may_use_template

    if connection.vendor != "postgresql" or channel not in CHANNELS:
        return None, None
    given, named = (
        (template, template.pk) if isinstance(template, CertificateTemplate) else (None, template)
    )
    if given is not None and not _issues_csrs_at_once(given):
        return None, None
    try:
        parsed = parse_csr(
            csr, allowed_key_algorithms=given.key_algorithms if given is not None else None
        )
        subject = subject_for(requester, address_checked=True)  # the check reads the last
    except (X509Error, EnrollmentError):
        return None, None
    spki_sha256 = keys.spki_sha256(parsed.public_key)
    now = timezone.now()
    check = hotsql.enrolment_check(
        requester_id=requester.pk,
        template=named,
        since=now - timedelta(hours=1),
        now=now,
        address=account_email(requester),
        spki_sha256=spki_sha256,
    )
    if check is None:
        return None, None
    template = check.template
    if (
        not _issues_csrs_at_once(template)
        or keys.key_algorithm_of(parsed.public_key) not in template.key_algorithms
        or check.compromised
        or check.counts.address_taken
        or not may_use_template(requester, template, open_to_user=check.counts.open_to_requester)
    ):
        return None, template
    try:
        _check_limits(check.counts, template)
        ca = _online_issuing_ca(check.ca)
        if ca_lifetime.issuance_problem(ca, template) is not None:
            return None, template
        _check_ca_constraints(ca, subject)
        issued = keystore.issue_end_entity(
            ca, public_key=parsed.public_key, subject=subject, policy=template.policy()
        )
    except (EnrollmentError, X509Error):
        return None, template
    certificate = _new_certificate(
        ca=ca,
        owner=requester,
        mailbox=None,
        template=template,
        subject=subject,
        issued=issued,
        public_key=parsed.public_key,
        spki_sha256=spki_sha256,
    )
    certificate.pk = check.certificate_id
    request = _new_request(
        requester=requester,
        template=template,
        parsed=parsed,
        key_algorithm=None,
        approved=True,
        renewal_of=None,
        mailbox=None,
        source_address=source_address,
        idempotency_key=idempotency_key,
        channel=channel,
    )
    request.pk = check.request_id
    request.state = CertificateRequest.State.ISSUED
    request.certificate = certificate
    # The locked way's two events, in its order, with the same content.
    events = [
        audit.prepared(
            action="request.submit",
            actor=requester,
            target=request,
            source_address=source_address,
            detail=_submit_detail(request, renewal_of=None, mailbox=None),
        ),
        audit.prepared(
            action="certificate.issue",
            actor=requester,
            target=certificate,
            source_address=source_address,
            detail=_issue_detail(
                certificate,
                template=template,
                mailbox=None,
                delegate=requester,
                channel=audited_channel(request),
            ),
        ),
    ]
    # Outside a transaction the statement is one; inside a caller's, a savepoint keeps a
    # failure of it (a unique key taken meanwhile) from breaking the caller's.
    own = contextlib.nullcontext() if transaction.get_autocommit() else transaction.atomic()
    try:
        with own:
            hotsql.issue_checked(
                check=check,
                requester_id=requester.pk,
                certificate=certificate,
                request=request,
                events=events,
                parts=[audit.chain_parts(event) for event in events],
            )
    except hotsql.NotIssued as exc:
        _signed_not_stored(certificate, requester, f"{exc}; the locked way decides")
        return None, template
    except DatabaseError:
        _signed_not_stored(certificate, requester, "its statement failed")
        raise
    ldap_publish.publish_on_commit(requester.pk)
    return request, template


def _signed_not_stored(certificate: Certificate, requester: User, why: str) -> None:
    """Say in the log that a certificate was signed and then neither stored nor sent, so
    a signature the CA's records do not hold is accounted for (an HSM counts them)."""
    logger.info(
        "Certificate %s for %s signed and not stored: %s.",
        certificate.serial,
        requester.get_username(),
        why,
    )


def _new_request(
    *,
    requester: User,
    template: CertificateTemplate,
    parsed: ParsedCsr | None,
    key_algorithm: keys.KeyAlgorithm | None,
    approved: bool,
    renewal_of: Certificate | None,
    mailbox: SharedMailbox | None,
    source_address: str | None,
    idempotency_key: str,
    channel: str,
) -> CertificateRequest:
    """The row of a request just made, not yet stored: APPROVED when it needs no approval."""
    return CertificateRequest(
        requester=requester,
        template=template,
        mailbox=mailbox,
        state=CertificateRequest.State.APPROVED if approved else CertificateRequest.State.PENDING,
        decision_reason="No approval required." if approved else "",
        key_source=(
            CertificateRequest.KeySource.CSR if parsed else CertificateRequest.KeySource.SERVER
        ),
        csr=parsed.csr.public_bytes(Encoding.DER) if parsed else None,
        key_algorithm=key_algorithm.value if key_algorithm else "",
        requested_subject=_printable(parsed.requested_subject) if parsed else "",
        requested_emails=[_printable(e) for e in parsed.requested_emails] if parsed else [],
        renewal_of=renewal_of,
        source_address=source_address,
        idempotency_key=idempotency_key,
        channel=channel,
    )


def _submit_detail(
    request: CertificateRequest, *, renewal_of: Certificate | None, mailbox: SharedMailbox | None
) -> dict[str, object]:
    """The detail of a request.submit event."""
    audited = audited_channel(request)
    return {
        "template": request.template.slug,
        "key_source": request.key_source,
        "renewal_of": renewal_of.serial if renewal_of else None,
        **({"mailbox": mailbox.email} if mailbox is not None else {}),
        **({"channel": audited} if audited else {}),
    }


OPEN_REQUEST_STATES = (CertificateRequest.State.PENDING, CertificateRequest.State.APPROVED)

# EST (enrollment/est.py) gives each request an idempotency key of its own, made from the
# CSR: a client repeating the CSR after a 202 finds its request (RFC 7030 4.2.3). Its keys
# share the (requester, idempotency_key) unique index with the API's, which is why the API
# refuses client keys with this prefix (enrollment/api/views.py _idempotency_key).
EST_KEY_PREFIX = "est:"
EST_CHANNEL = CertificateRequest.Channel.EST

# The channels the audit trail names in "channel": the protocols other than the portal's
# own pages and API. The web's and the API's events have always carried none (README,
# "EST (RFC 7030)"); the request row says which of the two it was.
AUDITED_CHANNELS = frozenset({CertificateRequest.Channel.EST})
CHANNELS = frozenset(CertificateRequest.Channel.values)  # a set once, not a list per call


def audited_channel(request: CertificateRequest) -> str:
    """The ``channel`` the audit events of this request's submission and issuance name,
    read from its column (``""``: none)."""
    return str(request.channel) if request.channel in AUDITED_CHANNELS else ""


NOT_A_DELEGATE = _("You are not a delegate of this shared mailbox.")


def _mailbox_for_delegate(mailbox: SharedMailbox, requester: User) -> SharedMailbox:
    """The mailbox, locked until the transaction ends (concurrent requests for it count
    one after the other, as a person's row does), if it is active and the requester is
    one of its delegates."""
    locked = SharedMailbox.objects.select_for_update().filter(pk=mailbox.pk).first()
    if locked is None or not locked.is_active:
        raise NotPermitted(_("This shared mailbox is no longer active."), field="mailbox")
    if not locked.delegates.filter(pk=requester.pk).exists():
        raise NotPermitted(NOT_A_DELEGATE, field="mailbox")
    return locked


def _check_mailbox_limits(
    counts: hotsql.EnrolmentCounts,
    template: CertificateTemplate,
    mailbox: SharedMailbox,
    *,
    renewal_of: Certificate | None,
) -> None:
    """The requester's hourly rate, and the per-template cap counted for the mailbox
    (PKIPORTAL_MAX_VALID_PER_TEMPLATE), not for the delegate who asks."""
    if counts.recent_requests >= settings.PKIPORTAL_ENROLL_RATE_PER_HOUR:
        raise _rate_limited()
    held = Certificate.objects.held().filter(mailbox=mailbox, template=template)
    if renewal_of is not None:
        held = held.exclude(pk=renewal_of.pk)
    waiting = CertificateRequest.objects.filter(
        mailbox=mailbox, template=template, state__in=OPEN_REQUEST_STATES
    )
    cap = settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE
    if held.count() + waiting.count() >= cap:
        raise PolicyViolation(
            _(
                "%(mailbox)s already has %(cap)d valid certificates or open requests for "
                "%(template)s; renew or revoke one instead."
            ),
            params={"mailbox": mailbox.email, "cap": cap, "template": template.name},
            field="template",
        )


def _request_fail(request: CertificateRequest, exc: EnrollmentError, *, actor: Actor) -> None:
    """Mark an approved request failed for good, audited: it no longer counts against the
    requester's cap, and requester and officer both see why."""
    with transaction.atomic():
        CertificateRequest.objects.filter(pk=request.pk).update(
            state=CertificateRequest.State.FAILED,
            error_code=type(exc).__name__,
            error=exc.english[:500],
            updated_at=timezone.now(),
        )
        request.refresh_from_db()
        audit_record(
            action="request.fail",
            actor=actor,
            target=request,
            outcome=AuditEvent.Outcome.FAILURE,
            detail={"error_code": type(exc).__name__, "error": exc.english[:500]},
        )


def _requester_may_still(request: CertificateRequest) -> None:
    """Raise unless the requester may still have what was asked for: an approval or a
    download comes later than the request, after an account, a group or a template may
    have changed."""
    from enrollment.permissions import may_use_template

    requester, template = request.requester, request.template
    if not requester.is_active:
        raise NotPermitted(
            _("%(name)s's account is no longer active."),
            params={"name": requester.get_full_name()},
        )
    if not may_use_template(requester, template):
        raise NotPermitted(
            _("%(name)s may no longer use the template %(template)s."),
            params={"name": requester.get_full_name(), "template": template.name},
        )
    # request.mailbox makes no query when mailbox_id is None.
    if request.mailbox is not None and not is_delegate(requester, request.mailbox):
        raise NotPermitted(
            _("%(name)s is no longer a delegate of the active shared mailbox %(mailbox)s."),
            params={"name": requester.get_full_name(), "mailbox": request.mailbox.email},
        )
    renewed = request.renewal_of
    if renewed is not None and not Certificate.objects.valid().filter(pk=renewed.pk).exists():
        if _revoked_for_an_old_address(renewed, requester):
            return  # the holder was told to renew it: the renewal goes on (enrollment.outdated)
        raise InvalidState(
            _(
                "The certificate this request renews (%(serial)s) is no longer valid; "
                "request a new one instead."
            ),
            params={"serial": renewed.serial},
        )


def _revoked_for_an_old_address(renewed: Certificate, requester: User) -> bool:
    """Revoked (affiliationChanged) while naming an address its holder no longer has: what
    the hourly run does to outdated certificates, whose holders it mailed to renew them. A
    renewal asked for meanwhile, still waiting for approval or download, must not die
    with it. Never a shared mailbox's: its address never changes (a renamed mailbox is a
    new one), and it always differs from the delegate's own, so affiliationChanged there
    is an officer's decision the renewal must not outlive."""
    stored = Certificate.objects.filter(pk=renewed.pk).values_list(
        "status", "revocation_reason", "email", "mailbox_id"
    )
    row = stored.first()
    return row is not None and (
        row[3] is None
        and row[0] == Certificate.Status.REVOKED
        and row[1] == Certificate.RevocationReasonChoice.AFFILIATION_CHANGED
        and bool(row[2])
        and row[2] != (requester.email or "").strip().lower()
    )


# Failures of the CA side, not of the request: the operator can fix them (the CA key, the
# hierarchy, a lock held elsewhere), so an approval they stop is not recorded at all.
TRANSIENT_ERRORS = (KeyStoreError, ConfigurationError, Busy)


def _fulfil_csr(request: CertificateRequest, *, actor: Actor) -> None:
    """Issue for a CSR request approved in the caller's transaction.

    A transient failure propagates and takes the approval with it, so the request stays
    pending for the officer to approve again. Any other failure is for good: it is
    recorded on the request (failed), where requester and officer both see it.
    """
    assert request.csr is not None  # request_has_csr_or_key_algorithm: a CSR request has one
    try:
        with transaction.atomic():
            try:
                public_key = parse_csr(bytes(request.csr)).public_key
            except X509Error as exc:
                raise PolicyViolation.from_x509(exc, field="csr") from exc
            certificate = certificate_issue(
                template=request.template,
                owner=request.requester,
                public_key=public_key,
                actor=actor,
                source_address=request.source_address,
                supersedes=request.renewal_of,
                address_checked=True,  # by request_submit's counts or _decide, just now
                channel=audited_channel(request),
            )
            request.certificate = certificate
            request.state = CertificateRequest.State.ISSUED
            request.save(update_fields=["certificate", "state", "updated_at"])
    except TRANSIENT_ERRORS:
        raise
    except EnrollmentError as exc:
        _request_fail(request, exc, actor=actor)


@sensitive_variables("pkcs12_password", "bundle")
def request_collect(
    *,
    request: CertificateRequest,
    actor: User,
    pkcs12_password: str,
    pkcs12_format: pkcs12.Pkcs12Format = pkcs12.Pkcs12Format.MODERN,
    source_address: str | None = None,
) -> tuple[Certificate, bytes]:
    """Generate the key of an approved portal-key request and hand out its PKCS#12, once."""
    if actor.pk != request.requester_id:
        raise NotPermitted(_("Only the requester can download this certificate."))
    with transaction.atomic():
        # A shared mailbox's row first, as mailbox_update and mailbox_set_active take it
        # before they change delegates or deactivate (and then lock its requests): the
        # delegation _requester_may_still reads then stays as it is until the key is out.
        lock_mailbox(request.mailbox_id)
        locked = CertificateRequest.objects.select_for_update().get(pk=request.pk)
        if not locked.awaits_download:
            raise InvalidState(
                _(
                    "This request has nothing to download (it was already downloaded, or it "
                    "is %(state)s)."
                ),
                params={"state": mid_sentence_when_read(locked.get_state_display())},
            )
        try:
            # Approved earlier: the person, the template or the renewed certificate may
            # have changed since, for good.
            _requester_may_still(locked)
            _check_server_key(locked.template, keys.KeyAlgorithm(locked.key_algorithm))
        except EnrollmentError as exc:
            permanent: EnrollmentError | None = exc
        else:
            permanent = None
            certificate, bundle = certificate_issue_with_server_key(
                template=locked.template,
                owner=locked.requester,
                key_algorithm=keys.KeyAlgorithm(locked.key_algorithm),
                pkcs12_password=pkcs12_password,
                pkcs12_format=pkcs12_format,
                actor=actor,
                source_address=source_address,
                supersedes=locked.renewal_of,
                mailbox=locked.mailbox,
            )
            locked.certificate = certificate
            locked.state = CertificateRequest.State.ISSUED
            locked.save(update_fields=["certificate", "state", "updated_at"])
            audit_record(
                action="pkcs12.download",
                actor=actor,
                target=certificate,
                source_address=source_address,
                detail={
                    "format": pkcs12.Pkcs12Format(pkcs12_format).value,
                    "request": locked.pk,
                    **({"mailbox": locked.mailbox.email} if locked.mailbox else {}),
                },
            )
    if permanent is not None:
        # It can never be collected: fail it, so it stops holding one of the person's slots.
        _request_fail(request, permanent, actor=actor)
        raise permanent
    request.refresh_from_db()
    return certificate, bundle


def _lock_key_of(request: CertificateRequest) -> None:
    """Claim (and so lock) the row of the key a CSR request carries, before the approval
    writes its audit event.

    A keyCompromise revocation locks the key's row, then the audit chain head; issuing
    here after the approval's event would take them the other way round, and PostgreSQL
    would abort one of the two. A CSR that no longer parses fails later, for good.
    """
    assert request.csr is not None  # request_has_csr_or_key_algorithm: a CSR request has one
    try:
        public_key = parse_csr(bytes(request.csr)).public_key
    except X509Error:
        return
    hotsql.claim_key(keys.spki_sha256(public_key))


def _decide(
    request: CertificateRequest,
    *,
    officer: User,
    approve: bool,
    reason: str,
    source_address: str | None = None,
) -> CertificateRequest:
    from enrollment.permissions import NOT_AN_OFFICER, decider, is_ra_officer

    action = "request.approve" if approve else "request.reject"
    with access_refusals_recorded(
        actor=officer, attempted=action, target=request, source_address=source_address
    ):
        if not is_ra_officer(officer):
            raise NotPermitted(_("Only RA officers decide on requests."), refusal=NOT_AN_OFFICER)
        barred = decider(officer).barred(request)
        if barred is not None:
            raise NotPermitted(decision_refusal(barred, request.template), refusal=barred)
    try:
        with transaction.atomic():
            locked = CertificateRequest.objects.select_for_update().get(pk=request.pk)
            if locked.state != CertificateRequest.State.PENDING:
                raise InvalidState(
                    _("This request is already %(state)s."),
                    params={"state": mid_sentence_when_read(locked.get_state_display())},
                )
            if approve:
                try:
                    _requester_may_still(locked)
                except EnrollmentError as exc:
                    # The refusal itself as the value: worded when read, as the sentence is.
                    raise type(exc)(
                        _("%(problem)s Reject the request instead."), params={"problem": exc}
                    ) from exc
                # The address may have changed since the request (a directory sync): an
                # administrator can fix it, so the request waits rather than failing.
                mailbox = locked.mailbox
                problem = (
                    account_address_problem(locked.requester)
                    if mailbox is None
                    else address_outside_domains(mailbox.email)
                )
                if problem is not None:
                    raise PolicyViolation(
                        _(
                            "%(problem)s Nothing was approved: the request stays pending, so "
                            "approve it once the address is corrected, or reject it."
                        ),
                        params={"problem": problem},
                        field="email",
                    )
                # And the CA it would come from must be able to certify it (a CA
                # name-constrained more narrowly than the setting), or the approved
                # request would only meet a 503 at every download.
                ca = locked.template.issuing_from()
                if ca is not None:
                    _check_ca_constraints(
                        ca,
                        subject_for(locked.requester, address_checked=True)
                        if mailbox is None
                        else subject_for_mailbox(mailbox),
                    )
            issue_now = approve and locked.key_source == CertificateRequest.KeySource.CSR
            if issue_now:
                _lock_key_of(locked)
                if locked.renewal_of_id is not None:
                    # And the certificate it renews, which the supersede step locks: a
                    # revocation of it takes its row, then the head, as the key's.
                    lock_in_order(Certificate.objects.filter(pk=locked.renewal_of_id))
            locked.state = (
                CertificateRequest.State.APPROVED if approve else CertificateRequest.State.REJECTED
            )
            locked.decided_by = officer
            locked.decided_at = timezone.now()
            locked.decision_reason = reason
            locked.save(update_fields=["state", "decided_by", "decided_at", "decision_reason",
                                       "updated_at"])  # fmt: skip
            audit_record(
                action=action,
                actor=officer,
                target=locked,
                source_address=source_address,
                detail={"reason": reason},
            )
            if issue_now:
                # Issued in the approval's transaction (a transient failure leaves it with
                # the approval); the requester's mail, sent when it commits, tells the
                # outcome, not only the approval.
                _fulfil_csr(locked, actor=officer)
            from enrollment.notifications import request_decided

            request_decided(locked)
    except TRANSIENT_ERRORS as stopped:
        audit_record(
            action="request.approve",
            actor=officer,
            target=request,
            outcome=AuditEvent.Outcome.FAILURE,
            source_address=source_address,
            detail={"error_code": type(stopped).__name__, "reason": reason},
        )
        if isinstance(stopped, KeyStoreError):
            logger.error("CA key store: %s", stopped.message)  # names key files: not shown
        raise ConfigurationError(
            _(
                "%(problem)s Nothing was approved or issued: the request stays pending, so "
                "approve it again once this is fixed."
            ),
            params={"problem": lazy(public_message, str)(stopped)},
        ) from stopped
    return locked


def decision_refusal(barred: str, template: CertificateTemplate) -> str:
    """What an officer is told who may not decide a request, for a Decider.barred reason."""
    from enrollment import permissions

    if barred == permissions.OWN_REQUEST:
        return _worded(_("You cannot decide on your own request."))
    if barred == permissions.MAILBOX_DELEGATE:
        # A delegate reads the mailbox and can get its key: not the one who checks.
        return _worded(_("You are a delegate of this shared mailbox: another officer decides."))
    if barred == permissions.OUT_OF_SCOPE:
        # Said without naming whose: the officer may not see who asked.
        return _worded(
            _(
                "This request is outside the people your officer scope covers: an officer "
                "whose scope covers its requester decides it."
            )
        )
    assert template.approver_group is not None  # NOT_AN_APPROVER: the template names one
    return _worded(
        _(
            "Requests for %(template)s are decided by the members of %(group)s, and you are "
            "not one of them."
        ),
        template=template.name,
        group=template.approver_group.name,
    )


def request_approve(
    *,
    request: CertificateRequest,
    officer: User,
    reason: str = "",
    source_address: str | None = None,
) -> CertificateRequest:
    return _decide(
        request,
        officer=officer,
        approve=True,
        reason=reason.strip(),
        source_address=source_address,
    )


def request_reject(
    *,
    request: CertificateRequest,
    officer: User,
    reason: str,
    source_address: str | None = None,
) -> CertificateRequest:
    if not reason.strip():
        raise PolicyViolation(_("Say why the request is rejected."), field="reason")
    return _decide(
        request,
        officer=officer,
        approve=False,
        reason=reason.strip(),
        source_address=source_address,
    )


def request_withdraw(
    *, request: CertificateRequest, actor: User, source_address: str | None = None
) -> CertificateRequest:
    """The requester takes back a request nothing has been issued for yet.

    A person who chose the wrong template, or no longer needs the certificate, should not
    leave it in the officers' queue nor hold one of their slots under the per-template
    cap. Only a pending request, or an approved portal-key request not yet downloaded,
    may be withdrawn. The request's row lock is the one approval, rejection and download
    take, so whichever comes second sees the first one's outcome: never both.
    """
    if actor.pk != request.requester_id:
        raise NotPermitted(
            _("Only the requester can withdraw a request; an RA officer rejects it instead.")
        )
    with transaction.atomic():
        locked = CertificateRequest.objects.select_for_update().get(pk=request.pk)
        if not locked.may_be_withdrawn:
            if locked.state == CertificateRequest.State.ISSUED:
                raise InvalidState(
                    _(
                        "This request is already issued: there is nothing to withdraw. Revoke "
                        "the certificate if you no longer need it."
                    )
                )
            raise InvalidState(
                _("This request is already %(state)s: there is nothing to withdraw."),
                params={"state": mid_sentence_when_read(locked.get_state_display())},
            )
        was = locked.state
        locked.state = CertificateRequest.State.WITHDRAWN
        locked.save(update_fields=["state", "updated_at"])
        audit_record(
            action="request.withdraw",
            actor=actor,
            target=locked,
            source_address=source_address,
            detail={"template": locked.template.slug, "state": was},
        )
    request.refresh_from_db()
    return locked


# --- API tokens -----------------------------------------------------------------------

# The last use of a token is recorded at most this often (enrollment.api.authentication):
# the check on every API call stays the one read of the token and its user.
LAST_USE_RESOLUTION = timedelta(hours=1)
API_TOKEN_LABEL_MAX_LENGTH = 100
# Unicode categories a token's name may not hold: controls, format characters (bidi
# overrides that reorder what the audit trail shows), surrogates, private use, unassigned,
# and line and paragraph separators.
_LABEL_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class TokenVia:
    """Where a token was made or revoked, as audit events and e-mails name it."""

    WEB = "web"  # /account/tokens/
    API = "api"  # /api/v1/auth/
    ADMIN = "admin"


def api_token_label_problem(label: str) -> str | None:
    """What is wrong with a token name, or None: a name is shown on pages, in e-mails and
    in the audit trail, so it is plain, printable text."""
    if len(label) > API_TOKEN_LABEL_MAX_LENGTH:
        return _worded(
            _("Keep the name to %(limit)d characters or fewer."),
            limit=API_TOKEN_LABEL_MAX_LENGTH,
        )
    if any(unicodedata.category(char) in _LABEL_REFUSED_CATEGORIES for char in label):
        return _worded(
            _("Use letters, digits, spaces and punctuation: no control or invisible characters.")
        )
    return None


def _live_tokens(owner: User) -> list[AuthToken]:
    now = timezone.now()
    return list(
        AuthToken.objects.filter(user=owner)
        .filter(Q(expiry__gt=now) | Q(expiry__isnull=True))
        .select_related("api_token")
    )


def token_facts(token: AuthToken) -> dict[str, object]:
    """How audit events and e-mails name a token: its prefix and name, never its digest."""
    named = getattr(token, "api_token", None)
    return {"prefix": token.token_key, "label": named.label if named is not None else ""}


@sensitive_variables("clear")
def api_token_create(
    *,
    owner: User,
    label: str,
    lifetime_days: int | None = None,
    via: str,
    source_address: str | None = None,
    second_factor: bool = False,
    second_factor_kind: str = "",
    second_factor_key_model: str = "",
) -> tuple[ApiToken, str]:
    """Mint an API token for its owner; returns its row and the token, in clear, once.

    Only knox's digest of the token is stored. ``lifetime_days`` defaults to, and may
    never exceed, API_TOKEN_TTL_DAYS; an owner holds at most PKIPORTAL_MAX_API_TOKENS
    live tokens, each under a name of its own (the API may leave it empty).
    ``second_factor``: the owner confirmed one to mint it (enrollment.permissions), with
    ``second_factor_kind`` (an accounts.models.SecondFactorKind) and, for a key that proved
    its model, ``second_factor_key_model`` (its AAGUID): what the attestation policy weighs.
    """
    if not second_factor:
        second_factor_kind = second_factor_key_model = ""
    label = label.strip()
    problem = api_token_label_problem(label)
    if problem is not None:
        raise PolicyViolation(problem, field="label")
    if via == TokenVia.WEB and not label:
        raise PolicyViolation(
            _("Name the token, e.g. after the script that uses it."), field="label"
        )
    longest = settings.API_TOKEN_TTL_DAYS
    days = longest if lifetime_days is None else lifetime_days
    if not 1 <= days <= longest:
        raise PolicyViolation(
            _("A token lives 1 to %(longest)d days (API_TOKEN_TTL_DAYS)."),
            params={"longest": longest},
            field="lifetime_days",
        )
    with transaction.atomic():
        # One creation per person at a time, so two at once cannot both pass the cap.
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
        live = _live_tokens(owner)
        cap = settings.PKIPORTAL_MAX_API_TOKENS
        if len(live) >= cap:
            raise PolicyViolation(
                _(
                    "You already have %(count)d API tokens, the most one person may hold "
                    "(%(cap)d); revoke one you no longer use first."
                ),
                params={"count": len(live), "cap": cap},
            )
        if label and label.casefold() in {
            str(token_facts(token)["label"]).casefold() for token in live
        }:
            raise PolicyViolation(
                _("You already have a token with that name; choose another."), field="label"
            )
        token, clear = AuthToken.objects.create(user=owner, expiry=timedelta(days=days))
        named = token.api_token  # made with the token (_api_token_row)
        named.label = label
        named.second_factor = second_factor
        named.second_factor_kind = second_factor_kind
        named.second_factor_key_model = second_factor_key_model
        named.save(
            update_fields=[
                "label",
                "second_factor",
                "second_factor_kind",
                "second_factor_key_model",
            ]
        )
        minted_with = {"second_factor_kind": second_factor_kind} if second_factor else {}
        if second_factor_key_model:
            minted_with["aaguid"] = second_factor_key_model
        audit_record(
            action="api_token.create",
            actor=owner,
            target=owner,
            source_address=source_address,
            detail={
                **token_facts(token),
                "expires": token.expiry,
                "via": via,
                "second_factor": second_factor,
                **minted_with,
            },
        )
        from enrollment.notifications import api_token_created

        api_token_created(named, via=via, source_address=source_address)
    return named, clear


def api_token_revoke(
    *,
    token: AuthToken,
    actor: Actor,
    via: str,
    source_address: str | None = None,
) -> bool:
    """Revoke one token (delete it: knox has no other state); False if it was gone already.

    Its owner is e-mailed when someone else revoked it (an administrator, for a leaver).
    """
    facts = token_facts(token)
    owner = token.user
    with transaction.atomic():
        deleted, _per_model = AuthToken.objects.filter(pk=token.pk).delete()
        if not deleted:
            return False
        audit_record(
            action="api_token.revoke",
            actor=actor,
            target=owner,
            source_address=source_address,
            detail={**facts, "via": via},
        )
        if getattr(actor, "pk", None) != owner.pk:
            from enrollment.notifications import api_token_revoked

            api_token_revoked(owner, facts=facts, actor=actor)
    return True


def api_tokens_revoke_all(
    *, owner: User, actor: Actor, via: str, source_address: str | None = None
) -> int:
    """Revoke every token of the owner (a lost laptop, a leaked script); how many."""
    with transaction.atomic():
        tokens = list(
            AuthToken.objects.filter(user=owner).select_related("api_token").order_by("created")
        )
        AuthToken.objects.filter(pk__in=[token.pk for token in tokens]).delete()
        audit_record(
            action="api_token.revoke_all",
            actor=actor,
            target=owner,
            source_address=source_address,
            detail={
                "count": len(tokens),
                "prefixes": [token.token_key for token in tokens],
                "via": via,
            },
        )
    return len(tokens)


def api_token_uses_record(*, uses: dict[str, datetime]) -> int:
    """Note when these tokens (by digest) authenticated calls; how many rows changed. Not
    audited: the calls they make are. A row another process recorded within the hour
    before a use is left alone, so processes that saw the same token change it once."""
    if not uses:
        return 0
    noted = Case(
        *(When(auth_token_id=digest, then=Value(at)) for digest, at in uses.items()),
        output_field=models.DateTimeField(),
    )
    an_hour_before = Case(
        *(
            When(auth_token_id=digest, then=Value(at - LAST_USE_RESOLUTION))
            for digest, at in uses.items()
        ),
        output_field=models.DateTimeField(),
    )
    return (
        ApiToken.objects.filter(auth_token_id__in=list(uses))
        .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=an_hour_before))
        .update(last_used_at=noted)
    )


def _api_token_row(sender: Any, instance: AuthToken, created: bool, **kwargs: Any) -> None:
    """Every knox token gets its row, whoever made it (our services, tests, a shell)."""
    if created and not kwargs.get("raw"):
        ApiToken.objects.create(auth_token=instance)


def api_token_rows_connect() -> None:
    post_save.connect(_api_token_row, sender=AuthToken, dispatch_uid="api_token_row")


def api_tokens_purge(*, now: datetime | None = None) -> int:
    """Delete expired API tokens, and those of leavers; how many. Only the daily task does
    it, not every request.

    The token check refuses an inactive account's token at once. It is deleted only once
    the account has been off for the leavers' grace period (enrollment.leavers), like its
    certificates: a directory-sync glitch undone within it breaks no script, while a leaver
    re-hired months later does not find an old script's token working again. With the
    leavers' revocation switched off, tokens of inactive accounts stay refused, not deleted.
    """
    now = now or timezone.now()
    _deleted, per_model = AuthToken.objects.filter(expiry__lt=now).delete()
    purged: int = per_model.get(AuthToken._meta.label, 0)  # knox is untyped
    hours = settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS
    if hours is None:
        return purged
    leaver = Q(is_active=False, deactivated_at__lte=now - timedelta(hours=hours))
    for owner_id in (
        User.objects.filter(leaver, auth_token_set__isnull=False)
        .values_list("pk", flat=True)
        .distinct()
    ):
        with transaction.atomic():
            # Again under the account's lock: a sync may have switched it back on since.
            owner = User.objects.select_for_update().filter(leaver, pk=owner_id).first()
            if owner is not None:
                purged += api_tokens_revoke_all(owner=owner, actor=None, via="account_deactivated")
    return purged


# --- background work ------------------------------------------------------------------


def scheduled_run_record(*, name: str) -> None:
    """Note that a periodic task finished a run, so /health/ can tell when beat stops.

    One upsert, not audited: it happens every few minutes and changes nothing anyone did.
    """
    ScheduledRun.objects.bulk_create(
        [ScheduledRun(name=name, last_run_at=timezone.now())],
        update_conflicts=True,
        unique_fields=["name"],
        update_fields=["last_run_at"],
    )


def task_drop_record(*, name: str, task_id: str, deliveries: int) -> None:
    """Audit a task message dropped because its runs kept killing their worker.

    Its arguments stay out: the task ids are enough to find it in the worker log.
    """
    audit_record(
        action="task.drop",
        outcome=AuditEvent.Outcome.FAILURE,
        detail={"task": name, "task_id": task_id, "redeliveries": deliveries},
    )
