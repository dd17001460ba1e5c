"""Web pages of the CA side: /enroll/, /enroll/requests/, /certificates/, /ra/requests/.

A holder asks for their archived key back from /certificates/; the recovery's own pages
are the RA side's (enrollment.ra_views).

Views decide who may look; forms check the shape of input; services decide everything
else. A service's EnrollmentError is shown on the form with a 4xx and changes nothing.
The PKCS#12 password passes through here once: it is kept out of error reports by
@sensitive_post_parameters (the POST data) and @sensitive_variables (every local of the
view and of the frames below it: form cleaning, services and pkcs12 hold it under names
of their own), and never written to messages, logs or the audit trail.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.requests import AuthenticatedHttpRequest
from enrollment import (
    ca_lifetime,
    leavers,
    mailboxes,
    outdated,
    ra_selectors,
    recovery,
    scopes,
    services,
)
from enrollment.edge import (
    client_address,
    officer_required,
    officer_required_to,
    report_download,
    show_error,
)
from enrollment.exceptions import EnrollmentError, PolicyViolation, public_message
from enrollment.forms import (
    CsrForm,
    DecisionForm,
    Pkcs12PasswordForm,
    RecoveryAskForm,
    RecoveryWithdrawForm,
    RevokeForm,
    ServerKeyForm,
    WithdrawForm,
)
from enrollment.models import (
    ArchivedKey,
    Certificate,
    CertificateAuthority,
    CertificateRequest,
    CertificateTemplate,
    KeyRecoveryRequest,
)
from enrollment.permissions import (
    NOT_AN_APPROVER,
    OUT_OF_SCOPE,
    decider,
    is_key_recovery_agent,
    is_ra_officer,
    may_use_template,
    templates_for,
)
from enrollment.scopes import reach_of
from enrollment.x509 import keys, pkcs7
from enrollment.x509.names import readable_name

PASSWORD_FIELDS = ("pkcs12_password", "pkcs12_password_confirm")
OPEN_STATES = (CertificateRequest.State.PENDING, CertificateRequest.State.APPROVED)
DOWNLOADS: dict[str, tuple[str, str]] = {
    # kind: (file suffix, content type)
    "cer": (".cer", "application/pkix-cert"),
    "pem": (".pem", "application/x-pem-file"),
    "p7b": ("-chain.p7b", "application/pkcs7-mime"),
    "chain": ("-chain.pem", "application/x-pem-file"),
}


# --- helpers --------------------------------------------------------------------------


def _visible_certificate(user: Any, pk: int) -> Certificate:
    """Its holders (the owner, or a shared mailbox's delegates) and RA officers whose scope
    covers it see a certificate's page; to anyone else it does not exist."""
    certificate = get_object_or_404(
        Certificate.objects.select_related("ca", "template", "owner", "mailbox"), pk=pk
    )
    if services.may_hold(user, certificate):
        return certificate
    if not (is_ra_officer(user) and reach_of(user).covers_certificate(certificate)):
        raise Http404("No such certificate.")
    return certificate


def _own_certificate(user: Any, pk: int, why: str | None = None) -> Certificate:
    """Renewing, revoking and asking for the key back here are for the owner; an officer
    who can see it gets a 403 (``why``: what it says, in the reader's language)."""
    certificate = _visible_certificate(user, pk)
    if not services.may_hold(user, certificate):
        raise PermissionDenied(why or _("Only the owner renews or revokes a certificate here."))
    return certificate


def _renewal(user: Any, pk: object) -> Certificate | None:
    """The certificate a form says it renews (the person's own, or a shared mailbox's they
    are a delegate of); someone else's is a 404, like its page."""
    if pk in (None, ""):
        return None
    try:
        number = int(str(pk))
    except ValueError:
        raise Http404("No such certificate.") from None
    certificate = get_object_or_404(Certificate.objects.select_related("mailbox"), pk=number)
    if not services.may_hold(user, certificate):
        raise Http404("No such certificate.")
    return certificate


def _held_valid(user: Any, templates: Any) -> dict[int, list[Certificate]]:
    """The person's own valid certificates of these templates, newest first, by template
    id: enrolling again where one is held piles certificates up, so the pages offer to
    renew it instead (a shared mailbox's are the mailbox's, not the person's)."""
    held: dict[int, list[Certificate]] = {}
    found = (
        Certificate.objects.valid()
        .owned_by(user)
        .filter(template__in=templates)
        .order_by("-not_before", "-pk")
    )
    for certificate in found:
        held.setdefault(certificate.template_id or 0, []).append(certificate)
    return held


def _renewals_waiting(certificates: list[Certificate]) -> dict[int, CertificateRequest]:
    """The open request renewing each of these certificates, by certificate id: only one
    can, so the pages point to it rather than offer a Renew button that is refused."""
    found = CertificateRequest.objects.filter(renewal_of__in=certificates, state__in=OPEN_STATES)
    return {r.renewal_of_id: r for r in found if r.renewal_of_id is not None}


def _file_stem(certificate: Certificate) -> str:
    name = slugify(certificate.common_name) or "certificate"
    return f"{name}-{certificate.serial[:12]}"


def _attachment(body: bytes, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _pkcs12_response(request: HttpRequest, certificate: Certificate, bundle: bytes) -> HttpResponse:
    """The one-time download: never cached anywhere, named as the certificate's other
    downloads are (name and serial prefix), so a renewal's file does not take the name of
    the one it renews."""
    response = _attachment(bundle, "application/x-pkcs12", _file_stem(certificate) + ".p12")
    response["Cache-Control"] = "no-store"
    return report_download(request, response)


def _say_if_cut_short(request: HttpRequest, certificate: Certificate) -> None:
    """The .p12 download leaves the page as it was: the next page says what the issuing
    CA's end did to this certificate (its own page says it for good)."""
    short = ca_lifetime.cut_short(certificate)
    if short is not None:
        messages.warning(request, _("Your new certificate: %(note)s") % {"note": short.message})


def _csr_of(cert_request: CertificateRequest) -> x509.CertificateSigningRequest | None:
    """The request's CSR, parsed (it was checked when it came), or None for a portal key."""
    if cert_request.key_source != CertificateRequest.KeySource.CSR or not cert_request.csr:
        return None
    try:
        return x509.load_der_x509_csr(bytes(cert_request.csr))
    except ValueError:
        return None


def _csr_key(cert_request: CertificateRequest) -> str:
    """A CSR's key as people read it ("RSA 3072", "EC P-256"); empty for a portal key,
    whose algorithm the request names itself."""
    csr = _csr_of(cert_request)
    return keys.describe_public_key(csr.public_key()) if csr is not None else ""


def _csr_differences(
    cert_request: CertificateRequest, common_name: str, emails: list[str]
) -> list[str]:
    """What a CSR asked for that the certificate does not say (``common_name`` and
    ``emails``, what it carries or will carry): names come from the account."""
    if cert_request.key_source != CertificateRequest.KeySource.CSR:
        return []
    csr = _csr_of(cert_request)
    notes: list[str] = []
    names = (
        [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if csr is not None
        else []
    )
    if names and names != [common_name]:
        notes.append(
            _(
                "Your request asked for the name “%(asked)s”; the certificate carries your "
                "account's name, “%(name)s”."
            )
            % {"asked": ", ".join(names), "name": common_name}
        )
    asked = [e.lower() for e in cert_request.requested_emails]
    if asked and sorted(set(asked)) != sorted(emails):
        notes.append(
            _(
                "Your request asked for %(asked)s; the certificate carries your account's "
                "address, %(address)s."
            )
            % {"asked": ", ".join(cert_request.requested_emails), "address": ", ".join(emails)}
        )
    return notes


def _certificate_csr_notes(certificate: Certificate) -> list[str]:
    cert_request = getattr(certificate, "request", None)
    if cert_request is None:
        return []
    return _csr_differences(cert_request, certificate.common_name, certificate.emails)


def _request_csr_differs(cert_request: CertificateRequest) -> bool:
    """Whether the certificate names someone other than the CSR asked for: what it was
    issued with, or before issuance what the account gives."""
    if cert_request.certificate is not None:
        name, emails = cert_request.certificate.common_name, cert_request.certificate.emails
    else:
        requester = cert_request.requester
        name = services.account_common_name(requester)
        emails = [services.account_email(requester)]
    return bool(_csr_differences(cert_request, name, emails))


# --- home -----------------------------------------------------------------------------


@require_safe
def help_mail_clients(request: HttpRequest) -> HttpResponse:
    """How to import the .p12 and turn S/MIME on: where Windows' web enrollment installs
    the certificate for you, a .p12 needs these steps. Public: it holds nothing private."""
    archived = CertificateTemplate.objects.filter(is_active=True, archive_key=True).exists()
    return render(request, "enrollment/help/mail_clients.html", {"archived_templates": archived})


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """The start page: what the portal is for, my certificates and what waits for me."""
    context: dict[str, object] = {
        "authorities": CertificateAuthority.objects.ours().select_related("parent"),
    }
    if request.user.is_authenticated:
        context["my_certificates"] = Certificate.objects.owned_by(request.user).select_related(
            "template", "ca"
        )[:20]
        context["open_requests"] = CertificateRequest.objects.filter(
            requester=request.user, state__in=OPEN_STATES
        ).select_related("template", "decided_by", "invitation__rollout")
        # A recovered key waits a short while for its one download: say so where people look.
        context["my_recoveries"] = ra_selectors.open_recoveries_for_recipient(request.user)
        if is_ra_officer(request.user):
            # Those theirs to decide: not their own, nor those other officers approve.
            context["pending_count"] = ra_selectors.pending_enrolment_counts(request.user).theirs
            # Key holders' own recovery requests wait for an officer to accept them: those
            # of the holders the officer's scope covers.
            context["recovery_asks"] = (
                KeyRecoveryRequest.objects.filter(
                    reach_of(request.user).certificates("certificate__"),
                    state=KeyRecoveryRequest.State.REQUESTED,
                )
                .exclude(asked_by=request.user)
                .count()
            )
        if is_key_recovery_agent(request.user):
            # Approved recoveries wait for an agent: agents rarely visit /ra/ otherwise.
            context["recoveries_for_agents"] = ra_selectors.recoveries_for_agents(
                reach_of(request.user)
            ).count()
    return render(request, "enrollment/home.html", context)


# --- enrolment ------------------------------------------------------------------------


@login_required
@require_safe
def enroll_index(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The templates this person may use, each explained in plain words."""
    templates = list(templates_for(request.user))
    held = _held_valid(request.user, templates)
    waiting = _renewals_waiting([certificates[0] for certificates in held.values()])
    for template in templates:
        mine = held.get(template.pk, [])
        setattr(template, "held", mine)  # noqa: B010 (for the template)
        setattr(template, "held_renewal", waiting.get(mine[0].pk) if mine else None)  # noqa: B010
    context = {
        "templates": templates,
        # Said before anyone picks a template: an address the CA refuses stops them all.
        "address_problem": services.account_address_problem(request.user),
    }
    return render(request, "enrollment/enroll_index.html", context)


@sensitive_variables()
@sensitive_post_parameters(*PASSWORD_FIELDS)
@login_required
@require_http_methods(["GET", "POST"])
def enroll(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """One template's page: a portal-generated key (PKCS#12 download) or your own CSR."""
    template = get_object_or_404(CertificateTemplate, slug=slug, is_active=True)
    if not may_use_template(request.user, template):
        raise Http404("No such template.")
    source = request.POST if request.method == "POST" else request.GET
    renewal = _renewal(request.user, source.get("renewal_of") or source.get("renew"))
    initial = {
        "renewal_of": renewal.pk if renewal else None,
        "mailbox": str(renewal.mailbox_id) if renewal and renewal.mailbox_id else "",
    }
    ask_password = not template.requires_approval
    # Only an archiving template with portal keys issues for a shared mailbox.
    for_mailboxes = (
        list(mailboxes.mailboxes_of(request.user))
        if template.archive_key and template.allow_server_key
        else []
    )
    key_form = ServerKeyForm(
        user=request.user,
        template=template,
        ask_password=ask_password,
        initial=initial,
        mailboxes=for_mailboxes,
    )
    csr_form = CsrForm(initial=initial)
    method = request.POST.get("method")
    status = 200
    if request.method == "POST":
        if method == "server" and template.allow_server_key:
            key_form = ServerKeyForm(
                request.POST,
                user=request.user,
                template=template,
                ask_password=ask_password,
                mailboxes=for_mailboxes,
            )
            if not key_form.is_valid():
                status = 400
            else:
                try:
                    return _enroll_with_server_key(request, template, key_form, renewal)
                except EnrollmentError as exc:
                    status = show_error(key_form, exc)
        elif method == "csr" and template.allow_csr:
            csr_form = CsrForm(request.POST, request.FILES)
            if not csr_form.is_valid():
                status = 400
            else:
                try:
                    return _enroll_with_csr(request, template, csr_form, renewal)
                except EnrollmentError as exc:
                    status = show_error(csr_form, exc)
        else:
            messages.error(request, _("Choose how to get your key: generated here or from a CSR."))
            status = 400
    context = {
        "template": template,
        "key_form": key_form,
        "csr_form": csr_form,
        "method": method,
        "renewal": renewal,
        # Near the issuing CA's end: what a certificate issued now would get, said up front.
        "outlook": ca_lifetime.template_outlook(template),
        "address_problem": services.account_address_problem(request.user),
        "mailboxes": for_mailboxes,
    }
    if renewal is None:
        # Said before a second certificate of the same kind is made: renewing replaces it.
        held = _held_valid(request.user, [template]).get(template.pk, [])
        context["held"] = held
        context["cap"] = settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE
        context["held_renewal"] = _renewals_waiting(held[:1]).get(held[0].pk) if held else None
    return render(request, "enrollment/enroll.html", context, status=status)


def _enroll_with_server_key(
    request: AuthenticatedHttpRequest,
    template: CertificateTemplate,
    form: ServerKeyForm,
    renewal: Certificate | None,
) -> HttpResponse:
    # A renewal stays with what it renews: a shared mailbox's, or the person's own.
    mailbox = renewal.mailbox if renewal is not None else form.chosen_mailbox
    # One transaction: if the key cannot be handed out, not even the request remains.
    with transaction.atomic():
        cert_request = services.request_submit(
            requester=request.user,
            template=template,
            key_algorithm=form.chosen_algorithm,
            renewal_of=renewal,
            source_address=client_address(request),
            mailbox=mailbox,
            channel=CertificateRequest.Channel.WEB,
        )
        if cert_request.awaits_download:
            certificate, bundle = services.request_collect(
                request=cert_request,
                actor=request.user,
                pkcs12_password=form.cleaned_data["pkcs12_password"],
                pkcs12_format=form.chosen_format,
                source_address=client_address(request),
            )
            _say_if_cut_short(request, certificate)
            return _pkcs12_response(request, certificate, bundle)
    messages.success(
        request,
        _(
            "Your request for %(template)s was sent to the RA officers. You will get an "
            "e-mail when it is decided; then come back here to choose a password and download."
        )
        % {"template": template.name},
    )
    return redirect("enrollment:request-detail", pk=cert_request.pk)


def _enroll_with_csr(
    request: AuthenticatedHttpRequest,
    template: CertificateTemplate,
    form: CsrForm,
    renewal: Certificate | None,
) -> HttpResponse:
    if renewal is not None and renewal.mailbox_id is not None:
        raise PolicyViolation(services.MAILBOX_NEEDS_SERVER_KEY, field="csr")
    # A transaction of request_submit's own (as the API's): one statement when it is
    # issued at once on PostgreSQL.
    cert_request = services.request_submit(
        requester=request.user,
        template=template,
        csr=form.cleaned_data["csr_data"],
        renewal_of=renewal,
        source_address=client_address(request),
        channel=CertificateRequest.Channel.WEB,
    )
    if cert_request.certificate_id is not None:
        messages.success(request, _("Your certificate is ready."))
        return redirect("enrollment:certificate-detail", pk=cert_request.certificate_id)
    messages.success(
        request,
        _(
            "Your request for %(template)s was sent to the RA officers. You will get an "
            "e-mail when it is decided."
        )
        % {"template": template.name},
    )
    return redirect("enrollment:request-detail", pk=cert_request.pk)


def _visible_request(user: Any, pk: int) -> CertificateRequest:
    """The requester and RA officers see a request's page; to anyone else it does not exist.
    An officer whose scope does not cover it gets a 403 that names no one."""
    cert_request = get_object_or_404(
        CertificateRequest.objects.select_related(
            "template", "requester", "decided_by", "certificate", "renewal_of", "mailbox"
        ),
        pk=pk,
    )
    if cert_request.requester_id == user.pk:
        return cert_request
    if not is_ra_officer(user):
        raise Http404("No such request.")
    _refuse_outside_scope(user, cert_request)
    return cert_request


def _refuse_outside_scope(
    officer: Any,
    cert_request: CertificateRequest,
    *,
    attempted: str = "",
    source_address: str | None = None,
) -> None:
    """A request outside the officer's scope is not theirs to see: 403, naming no one.
    ``attempted``: the decision a POST would make, whose refusal is audited (reading a
    page is not)."""
    if not scopes.reach_of(officer).covers_request(cert_request):
        if attempted:
            services.access_refusal_record(
                actor=officer,
                attempted=attempted,
                target=cert_request,
                refusal=OUT_OF_SCOPE,
                source_address=source_address,
            )
        raise PermissionDenied(scopes.OUTSIDE_REQUEST)


def _request_page(
    request: AuthenticatedHttpRequest,
    cert_request: CertificateRequest,
    *,
    form: Pkcs12PasswordForm | None = None,
    withdraw_form: WithdrawForm | None = None,
    status: int = 200,
) -> HttpResponse:
    is_requester = cert_request.requester_id == request.user.pk
    if form is None and is_requester and cert_request.awaits_download:
        form = Pkcs12PasswordForm(user=request.user, file_of=cert_request.template.name)
    named = cert_request.mailbox or cert_request.requester
    context = {
        "cert_request": cert_request,
        # Said before an officer decides, for the address the certificate will name.
        "address_outside": services.address_outside_domains((named.email or "").strip().lower())
        if cert_request.state == CertificateRequest.State.PENDING and (named.email or "").strip()
        else None,
        "form": form,
        "is_requester": is_requester,
        "csr_key": _csr_key(cert_request),
        "csr_differs": _request_csr_differs(cert_request),
        "can_withdraw": is_requester and cert_request.may_be_withdrawn,
        "withdraw_form": withdraw_form or WithdrawForm(request_pk=cert_request.pk),
    }
    return render(request, "enrollment/request_detail.html", context, status=status)


@sensitive_variables()
@sensitive_post_parameters(*PASSWORD_FIELDS)
@login_required
@require_http_methods(["GET", "POST"])
def request_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """A request's state; an approved portal-key request is downloaded from here, once."""
    cert_request = _visible_request(request.user, pk)
    form = None
    status = 200
    if request.method == "POST":
        if cert_request.requester_id != request.user.pk:
            raise PermissionDenied(_("Only the requester downloads the certificate."))
        form = Pkcs12PasswordForm(
            request.POST, user=request.user, file_of=cert_request.template.name
        )
        if not form.is_valid():
            status = 400
        else:
            try:
                certificate, bundle = services.request_collect(
                    request=cert_request,
                    actor=request.user,
                    pkcs12_password=form.cleaned_data["pkcs12_password"],
                    pkcs12_format=form.chosen_format,
                    source_address=client_address(request),
                )
            except EnrollmentError as exc:
                status = show_error(form, exc)
                cert_request.refresh_from_db()
                if not cert_request.awaits_download:
                    messages.error(request, public_message(exc))
                    form = None
            else:
                _say_if_cut_short(request, certificate)
                return _pkcs12_response(request, certificate, bundle)
    return _request_page(request, cert_request, form=form, status=status)


@login_required
@require_POST
def request_withdraw(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The requester takes back a request that waits for an officer or for their download."""
    cert_request = _visible_request(request.user, pk)
    if cert_request.requester_id != request.user.pk:
        raise PermissionDenied(
            _("Only the requester withdraws a request; an RA officer rejects it.")
        )
    form = WithdrawForm(request.POST, request_pk=cert_request.pk)
    if not form.is_valid():
        return _request_page(request, cert_request, withdraw_form=form, status=400)
    try:
        services.request_withdraw(
            request=cert_request, actor=request.user, source_address=client_address(request)
        )
    except EnrollmentError as exc:
        status = show_error(form, exc)
        cert_request.refresh_from_db()
        return _request_page(request, cert_request, withdraw_form=form, status=status)
    messages.success(
        request,
        _(
            "You withdrew request #%(number)s for %(template)s. Nothing will be issued for "
            "it, and it no longer counts against your limit for this template."
        )
        % {"number": cert_request.pk, "template": cert_request.template.name},
    )
    return redirect("enrollment:request-detail", pk=cert_request.pk)


# --- RA officers ----------------------------------------------------------------------


HolderKey = tuple[str, int | None, int | None]


def _holder_key(mailbox_id: int | None, owner_id: int | None, template_id: int | None) -> HolderKey:
    """Whose certificate of which template: a shared mailbox's, or else a person's."""
    if mailbox_id is not None:
        return ("mailbox", mailbox_id, template_id)
    return ("owner", owner_id, template_id)


def _held_by_requesters(pending: list[CertificateRequest]) -> dict[HolderKey, list[Certificate]]:
    """The valid certificates that the requesters (or, for a mailbox's request, the
    mailboxes) hold of the templates they ask for, newest first, by ("owner" or
    "mailbox", id, template id): one query for the whole queue."""
    owners = {r.requester_id for r in pending if r.mailbox_id is None}
    boxes = {r.mailbox_id for r in pending if r.mailbox_id is not None}
    found = (
        Certificate.objects.valid()
        .filter(Q(owner_id__in=owners) | Q(mailbox_id__in=boxes))
        .filter(template_id__in={r.template_id for r in pending})
        .only("serial", "not_before", "not_after", "owner", "mailbox", "template")
        .order_by("-not_before", "-pk")
    )
    held: dict[HolderKey, list[Certificate]] = {}
    for certificate in found:
        key = _holder_key(certificate.mailbox_id, certificate.owner_id, certificate.template_id)
        held.setdefault(key, []).append(certificate)
    return held


def _outside_scope(count: int, reach: scopes.Reach) -> str:
    """What the queue says of the pending requests outside the officer's scope: how many,
    never whose."""
    if count <= 0:
        return ""
    return ngettext(
        "%(count)d request outside your officer scope (%(scope)s) is not shown.",
        "%(count)d requests outside your officer scope (%(scope)s) are not shown.",
        count,
    ) % {"count": count, "scope": reach.describe()}


def _ra_page(
    request: AuthenticatedHttpRequest,
    *,
    failed: CertificateRequest | None = None,
    form: DecisionForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """The queue: the requests the officer decides, with those they may not (their own, a
    mailbox's they read) read-only. Those of templates other officers approve are counted
    and listed, read-only, only on asking (``?all=1``): where each team approves its own
    templates, an officer's queue is theirs, not every team's."""
    officer = decider(request.user)
    waiting = CertificateRequest.objects.filter(state=CertificateRequest.State.PENDING)
    # Outside the officer's scope: not listed, not even on asking; only counted.
    every = list(
        waiting.filter(officer.reach.requests())
        .select_related("requester", "template__approver_group", "renewal_of", "mailbox")
        .order_by("created_at", "id")
    )
    out_of_scope = waiting.count() - len(every) if not officer.reach.everyone else 0
    scopes.prime_requesters(every, [officer.reach])  # barred() asks covers_request of each
    # The rule services._decide enforces: why this officer may not decide each, or None.
    barred = {r.pk: officer.barred(r) for r in every}
    others = [r for r in every if barred[r.pk] == NOT_AN_APPROVER]
    show_all = request.GET.get("all") == "1"
    pending = every if show_all else [r for r in every if barred[r.pk] != NOT_AN_APPROVER]
    held = _held_by_requesters(pending)
    for pending_request in pending:
        setattr(pending_request, "barred", barred[pending_request.pk])  # noqa: B010
        # Said before an officer approves: a CSR's key, and a certificate of the same kind
        # already held (another one piles up unless it renews that one).
        setattr(pending_request, "csr_key", _csr_key(pending_request))  # noqa: B010
        key = _holder_key(
            pending_request.mailbox_id, pending_request.requester_id, pending_request.template_id
        )
        holds = [c for c in held.get(key, []) if c.pk != pending_request.renewal_of_id]
        setattr(pending_request, "holds", holds)  # noqa: B010
        # Said before an officer approves: an address outside the mail domains is refused.
        # A mailbox's certificate names the mailbox, so it is the mailbox's address.
        named = pending_request.mailbox or pending_request.requester
        email = (named.email or "").strip().lower()
        outside = services.address_outside_domains(email) if email else None
        setattr(pending_request, "address_outside", outside)  # noqa: B010 (for the template)
    # A request decided meanwhile has left the list: its error goes to the top of the page.
    page_errors: list[str] = []
    if failed is not None and form is not None and all(r.pk != failed.pk for r in pending):
        page_errors = [
            _("Request #%(number)s: %(error)s") % {"number": failed.pk, "error": e}
            for e in form.errors.get("__all__", [])
        ]
    decided = (
        CertificateRequest.objects.filter(officer.reach.requests(), decided_by__isnull=False)
        .select_related("requester", "template", "decided_by")
        .order_by("-decided_at", "-id")[:10]
    )
    context = {
        "pending": pending,
        "show_all": show_all,
        "others_count": len(others),
        "outside_scope": _outside_scope(out_of_scope, officer.reach),
        "decided": decided,
        "failed_id": failed.pk if failed else None,
        "failed_form": form,
        "page_errors": page_errors,
    }
    return render(request, "enrollment/ra_requests.html", context, status=status)


@login_required
@require_safe
def ra_requests(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Requests that wait for an RA officer, oldest first, with what they asked for."""
    officer_required(request)
    return _ra_page(request)


# The audit action of each decision DecisionForm offers.
DECISIONS = {"approve": "request.approve", "reject": "request.reject"}


@login_required
@require_POST
def ra_decide(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Approve or reject one request; the service refuses an officer's own request."""
    # Audited as the decision the form asks for, when refused for who asks.
    attempted = DECISIONS.get(request.POST.get("decision", ""), "request.decide")
    officer_required_to(request, attempted, CertificateRequest, pk)
    cert_request = get_object_or_404(CertificateRequest.objects.select_related("requester"), pk=pk)
    source_address = client_address(request)
    # Before the form: it names no one.
    _refuse_outside_scope(
        request.user, cert_request, attempted=attempted, source_address=source_address
    )
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return _ra_page(request, failed=cert_request, form=form, status=400)
    reason = form.cleaned_data["reason"]
    try:
        if form.approves:
            decided = services.request_approve(
                request=cert_request,
                officer=request.user,
                reason=reason,
                source_address=source_address,
            )
        else:
            decided = services.request_reject(
                request=cert_request,
                officer=request.user,
                reason=reason,
                source_address=source_address,
            )
    except EnrollmentError as exc:
        status = show_error(form, exc)
        return _ra_page(request, failed=cert_request, form=form, status=status)
    done = (
        _("Request #%(number)s by %(name)s approved.")
        if form.approves
        else _("Request #%(number)s by %(name)s rejected.")
    )
    messages.success(
        request, done % {"number": decided.pk, "name": decided.requester.get_full_name()}
    )
    if decided.state == CertificateRequest.State.FAILED:
        messages.error(
            request,
            _("Request #%(number)s could not be issued: %(error)s")
            % {"number": decided.pk, "error": decided.error},
        )
    return redirect("enrollment:ra-requests")


# --- my certificates ------------------------------------------------------------------


def _open_recoveries_of(certificates: Any) -> dict[int, KeyRecoveryRequest]:
    """The recovery in progress of each of these certificates' keys, if any (one at most)."""
    found = ra_selectors.with_quorum(  # shown as its approvals count now
        KeyRecoveryRequest.objects.filter(
            certificate__in=certificates, state__in=recovery.OPEN_STATES
        ).defer("bundle")
    )
    return {r.certificate_id: r for r in found}


@login_required
@require_safe
def certificate_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """My certificates with their fingerprints, my requests that are not issued, and the
    recoveries of my archived keys."""
    certificates = list(
        Certificate.objects.owned_by(request.user)
        # outdated: when one naming an old address is revoked, in the same statement.
        .select_related("template", "ca", "outdated")
        .annotate(has_archive=Exists(ArchivedKey.objects.filter(certificate=OuterRef("pk"))))
    )
    # django-stubs drops .annotate() fields after a custom QuerySet method (owned_by).
    with_archive = [c for c in certificates if c.has_archive]  # type: ignore[attr-defined]
    in_progress = _open_recoveries_of(with_archive)
    delay = leavers.revocation_delay()
    for certificate in certificates:
        certificate.open_recovery = in_progress.get(certificate.pk)
        certificate.owner = request.user  # names_old_address reads it; no query per row
        certificate.outdated_due = outdated.certificate_due(certificate, delay)
    requests = (
        CertificateRequest.objects.filter(requester=request.user)
        .filter(~Q(state=CertificateRequest.State.ISSUED))
        .select_related("template", "invitation")[:20]
    )
    context = {
        "certificates": certificates,
        "requests": requests,
        "recoveries": ra_selectors.recoveries_of_holder(request.user)[:20],
        # Shared mailboxes this person reads: their certificates, with the same pages.
        "mailbox_certificates": list(mailboxes.mailbox_certificates_for(request.user)[:100]),
        "mailboxes": list(mailboxes.mailboxes_of(request.user)),
    }
    return render(request, "enrollment/certificate_list.html", context)


def _certificate_page(
    request: HttpRequest,
    certificate: Certificate,
    *,
    revoke_form: RevokeForm | None = None,
    recover_form: RecoveryAskForm | None = None,
    status: int = 200,
) -> HttpResponse:
    # The holder: the owner, or a delegate of the shared mailbox it names.
    is_owner = services.may_hold(request.user, certificate)
    usable = bool(certificate.template and may_use_template(request.user, certificate.template))
    archived = hasattr(certificate, "archived_key")
    open_recovery = _open_recoveries_of([certificate]).get(certificate.pk) if archived else None
    # Where the key is depends on how it was asked for: imported certificates have no request.
    cert_request = getattr(certificate, "request", None)
    context = {
        "certificate": certificate,
        "key_source": cert_request.key_source if cert_request else None,
        "channel": cert_request.channel if cert_request else None,
        "file_stem": _file_stem(certificate),
        "subject": readable_name(certificate.certificate.subject),
        "chain": certificate.ca.chain(),
        "is_owner": is_owner,
        "can_renew": is_owner and certificate.state == "valid" and usable,
        "outdated_due": outdated.certificate_due(certificate, leavers.revocation_delay())
        if certificate.names_old_address
        else None,
        "automatic_revocation": leavers.revocation_delay() is not None,
        # Another CA's certificate: recorded as revoked here, to be revoked there too.
        "can_revoke": is_owner and certificate.status == Certificate.Status.VALID,
        "revoke_form": revoke_form or RevokeForm(),
        "csr_notes": _certificate_csr_notes(certificate) if is_owner else [],
        "cut_short": ca_lifetime.cut_short(certificate),
        "archived": archived,
        "renewed_by": certificate.renewals.select_related("certificate").first(),
        # Key recovery: the holder asks here (README.md, "Key recovery").
        "open_recovery": open_recovery,
        "open_recovery_visible": open_recovery is not None
        and (
            open_recovery.recipient_id == request.user.pk
            or is_ra_officer(request.user)
            or is_key_recovery_agent(request.user)
        ),
        "can_ask_recovery": is_owner and archived and open_recovery is None,
        "approvals_required": recovery.approvals_required(),
        "recover_form": recover_form or RecoveryAskForm(),
        "recoveries": ra_selectors.recoveries_of_holder(request.user).filter(
            certificate=certificate
        )[:10]
        if is_owner and archived
        else [],
        "withdraw_recovery_form": RecoveryWithdrawForm(
            recovery_pk=open_recovery.pk if open_recovery else None
        ),
    }
    return render(request, "enrollment/certificate_detail.html", context, status=status)


@login_required
@require_safe
def certificate_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """One certificate in human terms, with downloads, renewal and revocation for its owner."""
    return _certificate_page(request, _visible_certificate(request.user, pk))


@login_required
@require_safe
def certificate_download(request: AuthenticatedHttpRequest, pk: int, kind: str) -> HttpResponse:
    """Public material only: the certificate and its chain. Private keys are never here."""
    if kind not in DOWNLOADS:
        raise Http404("No such download.")
    certificate = _visible_certificate(request.user, pk)
    suffix, content_type = DOWNLOADS[kind]
    cert = certificate.certificate
    chain = [cert, *(ca.certificate for ca in certificate.ca.chain())]
    body = {
        "cer": lambda: pkcs7.certificate_der(cert),
        "pem": lambda: pkcs7.certificate_pem(cert),
        "p7b": lambda: pkcs7.certificates_to_p7b(chain),
        "chain": lambda: pkcs7.certificates_pem(chain),
    }[kind]()
    return _attachment(body, content_type, _file_stem(certificate) + suffix)


@login_required
@require_POST
def certificate_renew(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Renewing means a new key: the enrolment form, marked as renewing this certificate."""
    certificate = _own_certificate(request.user, pk)
    if certificate.template is None:
        messages.error(request, _("This certificate was not issued from a template; enrol anew."))
        return redirect("enrollment:certificate-detail", pk=certificate.pk)
    url = reverse("enrollment:enroll", args=[certificate.template.slug])
    return redirect(f"{url}?renew={certificate.pk}")


@login_required
@require_POST
def certificate_revoke(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Revoke my own certificate for one of the reasons a subscriber may give."""
    certificate = _own_certificate(request.user, pk)
    form = RevokeForm(request.POST)
    if not form.is_valid():
        return _certificate_page(request, certificate, revoke_form=form, status=400)
    try:
        services.certificate_revoke(
            certificate=certificate,
            reason=form.cleaned_data["reason"],
            actor=request.user,
            invalidity_date=form.cleaned_data["invalidity_date"],
            source_address=client_address(request),
        )
    except EnrollmentError as exc:
        status = show_error(form, exc)
        return _certificate_page(request, certificate, revoke_form=form, status=status)
    messages.success(
        request,
        services.imported_revocation_note(certificate)
        or _("The certificate is revoked. Mail clients learn it from the next revocation list."),
    )
    return redirect("enrollment:certificate-detail", pk=certificate.pk)


@login_required
@require_POST
def certificate_recover(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The holder asks for their archived key back; an RA officer must accept it first."""
    certificate = _own_certificate(
        request.user,
        pk,
        _(
            "Only the holder asks for their key back here; RA officers open a recovery on the "
            "RA pages."
        ),
    )
    form = RecoveryAskForm(request.POST)
    if not form.is_valid():
        return _certificate_page(request, certificate, recover_form=form, status=400)
    try:
        asked = recovery.recovery_ask(
            certificate=certificate,
            holder=request.user,
            reason=form.cleaned_data["reason"],
            pkcs12_format=form.cleaned_data["pkcs12_format"],
            source_address=client_address(request),
        )
    except EnrollmentError as exc:
        status = show_error(form, exc)
        return _certificate_page(request, certificate, recover_form=form, status=status)
    messages.success(
        request,
        _(
            "You asked for this key back (recovery #%(number)s). An RA officer will contact "
            "you to confirm it is you; you get an e-mail at each step, and only you can "
            "download the key."
        )
        % {"number": asked.pk},
    )
    return redirect("ra:recovery-detail", pk=asked.pk)
