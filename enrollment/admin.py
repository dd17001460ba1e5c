"""Admin pages: read-mostly. Issuance, revocation and CRLs go through services."""

from __future__ import annotations

from typing import Any, TypeVar

from knox.models import AuthToken

from django import forms
from django.contrib import admin, messages
from django.db import models, transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts import fido_metadata
from enrollment import mailboxes, ra_selectors, services
from enrollment.change_audit import scope_record, scope_state, template_record, template_state
from enrollment.edge import client_address
from enrollment.exceptions import EnrollmentError
from enrollment.health import approver_officers
from enrollment.models import (
    ApiToken,
    ArchivedKey,
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertificateTemplate,
    KeyRecoveryAgent,
    KeyRecoveryRequest,
    OfficerScope,
    RevocationList,
    SharedMailbox,
)
from enrollment.permissions import is_ra_officer
from enrollment.scopes import officers_limited_by, reach_of
from enrollment.x509.keys import KeyAlgorithm

# The portal's own name where Django would say "Django administration".
admin.site.site_header = gettext_lazy("pkiportal administration")
admin.site.site_title = gettext_lazy("pkiportal admin")
admin.site.index_title = gettext_lazy("Certificate authority, accounts and templates")


_ModelT = TypeVar("_ModelT", bound=models.Model)


class ReadOnlyAdmin(admin.ModelAdmin[_ModelT]):
    """Rows are made by services; the admin only shows them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ChangesAudited(admin.ModelAdmin[_ModelT]):
    """An admin whose creations, changes and deletions are audit events with each changed
    value's old and new (``audit_state``: what an object says, as plain values), written
    by ``audit_write`` in the admin's transaction: what is edited here goes through no
    service that would record it."""

    audit_prefix = ""  # the events' action: "<prefix>.create", ".change", ".delete"

    def audit_state(self, obj: _ModelT) -> dict[str, Any]:
        raise NotImplementedError

    def audit_write(
        self,
        request: HttpRequest,
        action: str,
        obj: _ModelT,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        raise NotImplementedError

    def save_model(
        self, request: HttpRequest, obj: _ModelT, form: ModelForm[_ModelT], change: bool
    ) -> None:
        # What the database says before the save: the form has already changed obj.
        stored = self.model._default_manager.filter(pk=obj.pk).first() if change else None
        before = self.audit_state(stored) if stored is not None else None
        form._audit_before = before  # type: ignore[attr-defined]  # read in save_related
        super().save_model(request, obj, form, change)

    def save_related(
        self, request: HttpRequest, form: ModelForm[_ModelT], formsets: Any, change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)  # many-to-many saved here
        obj = form.instance
        self.audit_write(
            request,
            f"{self.audit_prefix}.{'change' if change else 'create'}",
            obj,
            getattr(form, "_audit_before", None),
            self.audit_state(obj),
        )

    def delete_model(self, request: HttpRequest, obj: _ModelT) -> None:
        self._record_delete(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[_ModelT]) -> None:
        with transaction.atomic():  # the bulk action, unlike the delete page, has none
            for obj in queryset:
                self._record_delete(request, obj)
            super().delete_queryset(request, queryset)

    def _record_delete(self, request: HttpRequest, obj: _ModelT) -> None:
        before = self.audit_state(obj)
        self.audit_write(request, f"{self.audit_prefix}.delete", obj, before, None)


@admin.register(CertificateAuthority)
class CertificateAuthorityAdmin(ReadOnlyAdmin[CertificateAuthority]):
    list_display = ["name", "slug", "parent", "is_online", "is_default", "is_imported", "not_after"]
    exclude = ["der"]
    actions = ["publish_crl", "switch_templates"]

    # Publishing is harmless and audited, but it is an act, not a look: staff who may only
    # view CAs are not offered it (Django offers an action without permissions to them).
    @admin.action(description=gettext_lazy("Publish a new CRL now"), permissions=["publish_crl"])
    def publish_crl(self, request: HttpRequest, queryset: QuerySet[CertificateAuthority]) -> None:
        for ca in queryset:
            try:
                crl = services.crl_publish(
                    ca=ca, actor=request.user, source_address=client_address(request)
                )
            except EnrollmentError as exc:
                self.message_user(
                    request,
                    _("%(ca)s: %(error)s") % {"ca": ca, "error": exc.message},
                    messages.ERROR,
                )
            else:
                self.message_user(
                    request,
                    _("%(ca)s: published CRL #%(number)s.") % {"ca": ca, "number": crl.number},
                )

    def has_publish_crl_permission(self, request: HttpRequest) -> bool:
        # The model's change permission: the admin itself never edits a CA row.
        return request.user.has_perm("enrollment.change_certificateauthority")

    # What `manage.py switch_issuing_ca SLUG` does: the default CA's templates move to it.
    # A confirmation page first: it lists which templates move from which CA to which.
    @admin.action(
        description=gettext_lazy("Issue from this CA: move the default CA's templates to it…"),
        permissions=["switch_templates"],
    )
    def switch_templates(
        self, request: HttpRequest, queryset: QuerySet[CertificateAuthority]
    ) -> HttpResponse | None:
        from enrollment.ra_admin import ca_switch_action

        return ca_switch_action(self, request, queryset)

    def has_switch_templates_permission(self, request: HttpRequest) -> bool:
        # It changes templates and which CA is the default: both permissions.
        return request.user.has_perm(
            "enrollment.change_certificateauthority"
        ) and request.user.has_perm("enrollment.change_certificatetemplate")


class CertificateTemplateForm(ModelForm[CertificateTemplate]):
    """Key algorithms as boxes to tick, not a JSON list to type."""

    allowed_key_algorithms = forms.MultipleChoiceField(
        choices=[(algorithm.value, algorithm.label) for algorithm in KeyAlgorithm],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label=CertificateTemplate._meta.get_field("allowed_key_algorithms").verbose_name,
        help_text=gettext_lazy(
            "None ticked: every one of them. RSA-4096 keys take seconds to generate."
        ),
    )

    class Meta:  # the admin's modelform_factory adds the model and its fields
        help_texts = {
            "generation": gettext_lazy(
                "The S/MIME Baseline Requirements' profile. Strict: the "
                "emailProtection extended key usage only, for mail alone. Multipurpose: other "
                "extended key usages allowed beside it (S/MIME BR 7.1.2.3)."
            ),
        }

    def clean_allowed_key_algorithms(self) -> list[str]:
        """In the enum's order, as the seeded templates and the API list them."""
        ticked = set(self.cleaned_data["allowed_key_algorithms"])
        return [algorithm.value for algorithm in KeyAlgorithm if algorithm.value in ticked]


@admin.register(CertificateTemplate)
class CertificateTemplateAdmin(ChangesAudited[CertificateTemplate]):
    form = CertificateTemplateForm
    list_display = [
        "name",
        "purpose",
        "generation",
        "issues_from",
        "validity_days",
        "archive_key",
        "requires_approval",
        "approved_by",
        "is_active",
    ]
    list_filter = ["purpose", "archive_key", "requires_approval", "is_active"]
    list_select_related = ["issuing_ca", "approver_group"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["allowed_groups"]

    @admin.display(description=gettext_lazy("Issuing CA"), ordering="issuing_ca__name")
    def issues_from(self, template: CertificateTemplate) -> str:
        # Translators: a template's issuing CA when it names none (the default CA).
        return template.issuing_ca.name if template.issuing_ca is not None else _("the default")

    @admin.display(description=gettext_lazy("Approvers"), ordering="approver_group__name")
    def approved_by(self, template: CertificateTemplate) -> str:
        group = template.approver_group
        return group.name if group is not None else _("every RA officer")

    def get_form(
        self,
        request: HttpRequest,
        obj: CertificateTemplate | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> type[ModelForm[CertificateTemplate]]:
        """A template whose approvers group holds no active RA officer says so above the
        field: its requests wait for a superuser (health.templates_without_approvers)."""
        form = super().get_form(request, obj, change=change, **kwargs)
        field = form.base_fields.get("approver_group")
        group = obj.approver_group if obj is not None else None
        if field is not None and group is not None and not approver_officers(group).exists():
            field.help_text = _(
                "Warning: no active RA officer is in %(group)s now, so only a "
                "superuser can approve or reject this template's requests. %(help)s"
            ) % {"group": group.name, "help": field.help_text}
        return form

    # Templates are edited here, not through services, so their audit events are written
    # here (ChangesAudited): turning archive_key off stops key escrow; allowed_groups
    # decides who may enrol.
    audit_prefix = "template"

    def audit_state(self, obj: CertificateTemplate) -> dict[str, Any]:
        return template_state(obj)

    def audit_write(
        self,
        request: HttpRequest,
        action: str,
        obj: CertificateTemplate,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        template_record(
            action=action,
            template=obj,
            before=before,
            after=after,
            actor=request.user,
            source_address=client_address(request),
            source="admin",
        )


@admin.register(OfficerScope)
class OfficerScopeAdmin(ChangesAudited[OfficerScope]):
    """Officer scopes: whom a group's RA officers and key recovery agents act for. Only
    superusers see or change them: a scope decides an officer's power, as a role does."""

    list_display = ["name", "officers", "units_shown", "groups_shown", "limits"]
    list_select_related = ["officers"]
    filter_horizontal = ["people_groups"]
    fields = ["name", "officers", "organizational_units", "people_groups"]

    @admin.display(description=gettext_lazy("Organisational units"))
    def units_shown(self, scope: OfficerScope) -> str:
        return ", ".join(scope.units) or _("none")

    @admin.display(description=gettext_lazy("Groups of people"))
    def groups_shown(self, scope: OfficerScope) -> str:
        return ", ".join(g.name for g in scope.people_groups.all()) or _("none")

    @admin.display(description=gettext_lazy("Officers it limits"))
    def limits(self, scope: OfficerScope) -> str:
        """The group's active RA officers and recovery agents (superusers are never
        limited): a scope whose group holds none limits nobody yet."""
        names = officers_limited_by(scope)
        return ", ".join(names) if names else _("none yet")

    def get_queryset(self, request: HttpRequest) -> QuerySet[OfficerScope]:
        return super().get_queryset(request).prefetch_related("people_groups")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    audit_prefix = "scope"

    def audit_state(self, obj: OfficerScope) -> dict[str, Any]:
        return scope_state(obj)

    def audit_write(
        self,
        request: HttpRequest,
        action: str,
        obj: OfficerScope,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        scope_record(
            action=action,
            scope=obj,
            before=before,
            after=after,
            actor=request.user,
            source_address=client_address(request),
        )


@admin.register(Certificate)
class CertificateAdmin(ReadOnlyAdmin[Certificate]):
    list_display = ["common_name", "email", "template", "status", "not_after", "serial"]
    list_filter = ["status", "template", "ca"]
    # The RA console's search (ra_selectors.search_matches), so both find the same
    # certificates from indexes: plain icontains over these fields read every certificate.
    search_fields = ["common_name", "email", "serial", "fingerprint_sha256", "fingerprint_sha1"]
    search_help_text = gettext_lazy(
        "Name or e-mail (three characters or more), user name, serial (or its first six "
        "digits) or fingerprint."
    )
    show_full_result_count = False  # no count of the whole table beside every search
    exclude = ["der"]
    actions = ["revoke"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Certificate], search_term: str
    ) -> tuple[QuerySet[Certificate], bool]:
        if not search_term.strip():
            return queryset, False
        matches = ra_selectors.search_matches(search_term).values("pk")
        return queryset.filter(pk__in=matches), False

    # A confirmation page first (reason, "I am sure", the number typed for more than
    # one), as the RA page asks for each certificate; then each through the service.
    @admin.action(description=gettext_lazy("Revoke selected certificates…"), permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Certificate]) -> HttpResponse | None:
        from enrollment.ra_admin import certificate_revoke_action

        return certificate_revoke_action(self, request, queryset)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        # Whom the service and the RA page (/ra/certificates/) let revoke anyone's
        # certificates: superusers and RA officers who act for everyone (a scoped officer
        # revokes on the RA page); only they are offered it (bulk_revoke.may_revoke_in_bulk).
        return is_ra_officer(request.user) and reach_of(request.user).everyone

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(SharedMailbox)
class SharedMailboxAdmin(ReadOnlyAdmin[SharedMailbox]):
    """Read here; created and edited on /ra/mailboxes/ (one form that names delegates and
    audits each change). Deactivating and reactivating are actions, through the service."""

    list_display = ["email", "display_name", "is_active", "deactivated_at", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["email", "display_name"]
    actions = ["deactivate", "reactivate"]

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return mailboxes.may_manage(request.user)  # no officer scope covers a mailbox

    # A confirmation page first: open requests are withdrawn at once and the certificates
    # revoked after the grace period, and "select all" reaches every mailbox.
    @admin.action(
        description=gettext_lazy("Deactivate selected shared mailboxes…"), permissions=["manage"]
    )
    def deactivate(
        self, request: HttpRequest, queryset: QuerySet[SharedMailbox]
    ) -> HttpResponse | None:
        from enrollment.ra_admin import mailbox_deactivate_action

        return mailbox_deactivate_action(self, request, queryset)

    # Translators: an admin action on the selected shared mailboxes.
    @admin.action(description=gettext_lazy("Reactivate"), permissions=["manage"])
    def reactivate(self, request: HttpRequest, queryset: QuerySet[SharedMailbox]) -> None:
        from enrollment.ra_admin import mailboxes_set_active

        done = mailboxes_set_active(self, request, queryset.filter(is_active=False), active=True)
        if not done:
            self.message_user(request, _("None of the selected mailboxes is deactivated."))
        else:
            self.message_user(
                request,
                _("Reactivated %(mailboxes)s.") % {"mailboxes": ", ".join(done)},
                messages.SUCCESS,
            )


@admin.register(RevocationList)
class RevocationListAdmin(ReadOnlyAdmin[RevocationList]):
    list_display = ["ca", "number", "this_update", "next_update", "entries"]
    list_filter = ["ca"]
    exclude = ["der"]


@admin.register(KeyRecoveryAgent)
class KeyRecoveryAgentAdmin(ReadOnlyAdmin[KeyRecoveryAgent]):
    list_display = ["name", "user", "is_active", "not_after", "fingerprint_sha256"]
    list_filter = ["is_active"]
    exclude = ["der"]
    actions = ["deactivate"]

    def has_deactivate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("enrollment.change_keyrecoveryagent")

    @admin.action(
        description=gettext_lazy("Deactivate selected key recovery agents…"),
        permissions=["deactivate"],
    )
    def deactivate(
        self, request: HttpRequest, queryset: QuerySet[KeyRecoveryAgent]
    ) -> HttpResponse | None:
        from enrollment.ra_admin import kra_deactivate_action

        return kra_deactivate_action(self, request, queryset)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # "Add" is the registration form: a certificate upload through services.kra_register.
        return request.user.has_perm("enrollment.add_keyrecoveryagent")

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        from enrollment.ra_admin import kra_register_view

        return kra_register_view(self, request, extra_context)


@admin.register(ArchivedKey)
class ArchivedKeyAdmin(ReadOnlyAdmin[ArchivedKey]):
    list_display = ["certificate", "created_at"]
    exclude = ["envelope"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin[AuditEvent]):
    list_display = [
        "created_at",
        "actor_name",
        "action",
        "object_repr",
        "outcome",
        "source_address",
    ]
    list_filter = ["action", "outcome"]
    search_fields = ["actor_name", "object_repr", "action"]


@admin.register(KeyRecoveryRequest)
class KeyRecoveryRequestAdmin(ReadOnlyAdmin[KeyRecoveryRequest]):
    """Recoveries happen at /ra/recovery/ under dual control; the admin only shows them."""

    list_display = [
        "pk",
        "certificate",
        "asked_by",
        "requested_by",
        "state",
        "performed_by",
        "created_at",
    ]
    list_filter = ["state"]
    exclude = ["bundle"]  # encrypted, but nobody needs to see it here


# knox's own page lists tokens by their digest, lets anyone with the permission mint one
# (shown in a message, which lives in the session or a cookie) and deletes unaudited.
if admin.site.is_registered(AuthToken):
    admin.site.unregister(AuthToken)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin[ApiToken]):
    """Everyone's API tokens by owner, name and prefix; revoking one (a leaver's, a leaked
    one) goes through the service: audited, and its owner is e-mailed. None is made here:
    people make their own at /account/tokens/."""

    list_display = ["label_or_none", "owner", "prefix", "created", "expiry", "last_used_at"]
    list_select_related = ["auth_token__user"]
    search_fields = ["label", "=auth_token__user__username", "^auth_token__token_key"]
    search_help_text = gettext_lazy("Name, exact user name, or the token's first characters.")
    fields = readonly_fields = (
        "label_or_none",
        "owner",
        "prefix",
        "created",
        "expiry",
        "last_used_at",
        "minted_with",
    )
    ordering = ["-auth_token__created"]

    # Translators: an API token's name, as its owner gave it.
    @admin.display(description=gettext_lazy("name"), ordering="label")
    def label_or_none(self, obj: ApiToken) -> str:
        return obj.label or _("(no name)")

    @admin.display(description=gettext_lazy("owner"), ordering="auth_token__user__username")
    def owner(self, obj: ApiToken) -> str:
        return str(obj.auth_token.user.get_username())

    # Translators: the first characters of an API token, which identify it.
    @admin.display(description=gettext_lazy("starts with"))
    def prefix(self, obj: ApiToken) -> str:
        return f"{obj.auth_token.token_key}…"

    @admin.display(description=gettext_lazy("created"), ordering="auth_token__created")
    def created(self, obj: ApiToken) -> Any:
        return obj.auth_token.created

    @admin.display(description=gettext_lazy("expiry"), ordering="auth_token__expiry")
    def expiry(self, obj: ApiToken) -> Any:
        return obj.auth_token.expiry

    # Translators: what confirmed the owner's second factor when the API token was made.
    @admin.display(description=gettext_lazy("minted with"))
    def minted_with(self, obj: ApiToken) -> str:
        """What confirmed its owner's second factor when it was minted: what the role
        checks weigh (enrollment.permissions.token_role_refusal)."""
        if not obj.second_factor:
            return _("no second factor")
        if not obj.second_factor_kind:
            return _("a second factor (which one was not recorded then)")
        kind = obj.get_second_factor_kind_display()
        aaguid = obj.second_factor_key_model
        if not aaguid:
            return kind
        # The model's name where the FIDO metadata gives one (accounts.fido_metadata).
        return f"{kind} ({fido_metadata.label(aaguid, fido_metadata.models_named([aaguid]))})"

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("enrollment.view_apitoken") or self.has_delete_permission(
            request, obj
        )

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("enrollment.delete_apitoken")

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        services.api_token_revoke(
            token=obj.auth_token,
            actor=request.user,
            via=services.TokenVia.ADMIN,
            source_address=client_address(request),
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        with transaction.atomic():
            for named in queryset.select_related("auth_token__user"):
                self.delete_model(request, named)
