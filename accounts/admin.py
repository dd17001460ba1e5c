from __future__ import annotations

from typing import Any, TypeVar

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Lower
from django.forms import ModelForm
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.html import conditional_escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.debug import sensitive_post_parameters

from accounts import fido_metadata, mfa
from accounts.models import BackupCodeDevice, FidoModel, TotpDevice, User, WebAuthnDevice
from accounts.privilege import (
    is_privileged_group,
    may_administer,
    plain_groups,
    privileged_groups,
)
from accounts.search import query_words, word_pattern
from enrollment.audit import audit_record
from enrollment.change_audit import changes_from, role_groups
from enrollment.edge import client_address
from enrollment.services import address_key, other_account_with
from pkiportal import plurals
from pkiportal.fido_mds import COMPROMISED

_ModelT = TypeVar("_ModelT", bound=models.Model)
_FormT = TypeVar("_FormT", bound=ModelForm[Any])


class PortalUserChangeForm(UserChangeForm[User]):
    """Django's, refusing an address another active account has: no certificate would be
    issued for it to either (enrollment.services.address_taken).

    For an administrator who is not a superuser (``grants_privilege`` off) the groups offered
    are the plain ones, and the privileged groups the person is in stay as they are: neither
    shown for removal nor open to adding (accounts.privilege)."""

    grants_privilege = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        groups = self.fields.get("groups")
        if groups is not None and not self.grants_privilege:
            groups.queryset = plain_groups()  # type: ignore[attr-defined]
            if self.instance.pk:
                self.initial["groups"] = list(
                    self.instance.groups.filter(pk__in=plain_groups().values("pk"))
                )
            groups.help_text = _(
                "The groups that say who may use which template. Roles (RA officers, "
                "recovery agents), templates' approvers groups and groups holding "
                "permissions are given by a superuser."
            )

    def clean_groups(self) -> Any:
        chosen = self.cleaned_data.get("groups")
        if self.grants_privilege or chosen is None:
            return chosen
        kept = (
            list(self.instance.groups.filter(pk__in=privileged_groups().values("pk")))
            if self.instance.pk
            else []
        )
        return [*chosen, *kept]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        email = address_key(cleaned.get("email") or "")
        if email and cleaned.get("is_active", self.instance.is_active):
            other = other_account_with(email, self.instance.pk)
            if other is not None:
                self.add_error(
                    "email",
                    _(
                        "The active account %(username)s has this address: no "
                        "certificate is issued for an address two accounts share. Correct or "
                        "deactivate that account first."
                    )
                    % {"username": other.get_username()},
                )
        return cleaned


class RoleChangesAudited(admin.ModelAdmin[_ModelT]):
    """Role group changes made on these pages are audited as the signed-in admin's.

    enrollment.change_audit records every role group membership change; around the pages
    that add, change and delete (and the list's bulk actions) it is told who made it.
    """

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with changes_from("admin", request.user, client_address(request)):
            return super().changeform_view(request, *args, **kwargs)

    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with changes_from("admin", request.user, client_address(request)):
            return super().delete_view(request, *args, **kwargs)

    def changelist_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with changes_from("admin", request.user, client_address(request)):
            return super().changelist_view(request, *args, **kwargs)


admin.site.unregister(Group)


class PortalGroupForm(ModelForm[Group]):
    """A group named after a role makes its members that role: only a superuser names one
    so (``grants_privilege``)."""

    grants_privilege = True

    class Meta:
        model = Group
        fields = ("name", "permissions")

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"]
        if not self.grants_privilege and name in role_groups():
            raise ValidationError(
                _("This name makes the group's members a role; only a superuser gives it.")
            )
        return name


def _for(form: type[_FormT], request: HttpRequest) -> type[_FormT]:
    """The admin's form, told whether the signed-in administrator may grant privilege."""
    if getattr(request.user, "is_superuser", False):
        return form
    return type(form.__name__, (form,), {"grants_privilege": False})


@admin.register(Group)
class PortalGroupAdmin(RoleChangesAudited[Group], GroupAdmin):
    """Anyone allowed may manage the groups that say who uses which template; roles,
    templates' approvers groups and groups holding permissions are a superuser's
    (accounts.privilege)."""

    form = PortalGroupForm

    def get_form(
        self, request: HttpRequest, obj: Group | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm[Group]]:
        return _for(super().get_form(request, obj, change=change, **kwargs), request)

    # Members listed on a group's page; beyond these, a count and the accounts list filtered
    # by the group (paginated there): a group of everyone would otherwise fill the page.
    MEMBERS_SHOWN = 50

    def get_readonly_fields(self, request: HttpRequest, obj: Group | None = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None:
            # Linked to each account where the viewer may open accounts, named otherwise.
            users = self.admin_site.get_model_admin(User)
            linked = users.has_view_or_change_permission(request)
            fields = (*fields, "members" if linked else "member_names")
        return fields if request.user.is_superuser else (*fields, "permissions")

    @admin.display(description=gettext_lazy("Members"))
    def members(self, obj: Group) -> str:
        """Who is in the group, each linked to their account: who holds a role, or may use
        a template, is what a reviewer of the group wants to see."""
        return self._members(obj, linked=True)

    @admin.display(description=gettext_lazy("Members"))
    def member_names(self, obj: Group) -> str:
        """The same, unlinked, for a viewer who may not open accounts."""
        return self._members(obj, linked=False)

    def _members(self, obj: Group, *, linked: bool) -> str:
        total = obj.user_set.count()
        if not total:
            # Translators: a group's members, when it has none.
            return _("None.")
        shown = obj.user_set.order_by("username")[: self.MEMBERS_SHOWN]
        names = format_html_join(
            ", ",
            '<a href="{}">{}</a>' if linked else "{1}",
            (
                (reverse("admin:accounts_user_change", args=[user.pk]), user.get_username())
                for user in shown
            ),
        )
        if total <= self.MEMBERS_SHOWN:
            return format_html("{} ({}).", names, total)
        rest = total - self.MEMBERS_SHOWN
        if not linked:
            return _html(
                _("%(names)s and %(rest)s more (%(total)s in all)."),
                names=names,
                rest=rest,
                total=total,
            )
        every = reverse("admin:accounts_user_changelist") + f"?groups__id__exact={obj.pk}"
        return _html(
            _('%(names)s and %(rest)s more: <a href="%(url)s">all %(total)s members</a>.'),
            names=names,
            rest=rest,
            url=every,
            total=total,
        )

    def has_change_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        if not allowed or obj is None or request.user.is_superuser:
            return allowed
        return not is_privileged_group(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        """Nor a group a template is restricted to: without it the template may be open to
        everyone (an empty list of groups means anyone). A template's approvers group is
        protected from everyone (CertificateTemplate.approver_group): without it every
        officer would approve the template's requests."""
        allowed = super().has_delete_permission(request, obj)
        if not allowed or obj is None or request.user.is_superuser:
            return allowed
        return not (
            is_privileged_group(obj)
            or obj.certificatetemplate_set.exists()
            or obj.approver_templates.exists()
        )


def with_derived_dates(fieldsets: Any) -> list[Any]:
    """Django's account fieldsets, its dates section also showing when the account was
    switched off (its certificates are revoked a grace period later) and when the address
    last changed (certificates naming the old one are revoked too).

    The section is found by its fields, not its title: the title is translated, and read
    at import in the default language (PKIPORTAL_LANGUAGE), so comparing it with the
    English one lost both fields whenever that language was not English."""
    return [
        (
            name,
            {"fields": (*options["fields"], "deactivated_at", "email_changed_at")}
            if "date_joined" in options["fields"]
            else options,
        )
        for name, options in fieldsets
    ]


@admin.register(User)
class PortalUserAdmin(RoleChangesAudited[User], UserAdmin[User]):
    form = PortalUserChangeForm
    fieldsets = (
        *with_derived_dates(UserAdmin.fieldsets or ()),
        (
            gettext_lazy("Certificate attributes"),
            {"fields": ("display_name", "organizational_unit")},
        ),
        (gettext_lazy("Second factor"), {"fields": ("second_factor",)}),
    )
    readonly_fields = (
        "deactivated_at",
        "email_changed_at",
        "second_factor",
        "second_factor_state",
        "password_state",
    )

    # What only a superuser gives (accounts.privilege); groups are narrowed in the form.
    # The user name too: single sign-on finds accounts by it, so renaming a plain account to
    # the name a future officer will sign in with would hand their account to whoever set
    # its password.
    PRIVILEGE_FIELDS = ("is_superuser", "is_staff", "user_permissions", "username")

    def get_readonly_fields(self, request: HttpRequest, obj: User | None = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else (*fields, *self.PRIVILEGE_FIELDS)

    def get_fieldsets(self, request: HttpRequest, obj: User | None = None) -> Any:
        """The password and second factor without the links to their pages where those
        pages would refuse the viewer (a privileged account seen read-only, their own
        second factor): a link that leads to 403 only invites the attempt."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        swap: dict[str, str] = {}
        if not self.has_change_permission(request, obj):
            swap["password"] = "password_state"
        if not mfa.may_reset(request.user, obj):
            swap["second_factor"] = "second_factor_state"
        return [
            (
                name,
                {
                    **options,
                    "fields": tuple(
                        swap.get(f, f) if isinstance(f, str) else f for f in options["fields"]
                    ),
                },
            )
            for name, options in fieldsets
        ]

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> User | None:
        """For a write (a POST to the change, password, second-factor reset or delete page,
        each in one transaction), the account read under its row lock, held to the commit.
        Whether it may be administered is decided on that: a promotion committed meanwhile
        is seen (403), and one made after waits for the write to commit, then finds the
        password it set (accounts.privilege.start_afresh). Without the lock a help desk's
        save decided on the plain account could commit after the promotion."""
        found = super().get_object(request, object_id, from_field)
        if found is None or request.method != "POST":
            return found
        locked = self.get_queryset(request).select_for_update(of=("self",))
        return locked.filter(pk=found.pk).first()

    def has_change_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        """Also guards the password page, which asks this of the account."""
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or may_administer(request.user, obj))

    def has_delete_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or may_administer(request.user, obj))

    @admin.display(description=gettext_lazy("Second factor"))
    def second_factor(self, obj: User) -> str:
        """Whether the person has an authenticator app, and the way to reset a lost one."""
        return self._second_factor(obj, reset=True)

    @admin.display(description=gettext_lazy("Second factor"))
    def second_factor_state(self, obj: User) -> str:
        """The same, for a viewer who may not reset it (get_fieldsets)."""
        return self._second_factor(obj, reset=False)

    def _second_factor(self, obj: User, *, reset: bool) -> str:
        """Each second factor of the person's, for a help desk asked "which key is that?" or
        an auditor checking that officers use approved keys, and the way to reset them when
        lost: read only, and only what is not secret (no seed, no backup code or its digest;
        a key's public part is not shown either, it says nothing to a person)."""
        if obj.pk is None:
            return "-"
        mfa.forget_state(obj)
        state = mfa.state_for(obj)
        mfa.forget_state(obj)  # the admin's own form reads the account afresh
        items = []
        app = (
            TotpDevice.objects.filter(user=obj)
            .order_by("-confirmed", "-created_at")
            .only("confirmed", "created_at", "last_used_at")
            .first()
        )
        if app is None:
            items.append(_html(_("Authenticator app: none.")))
        else:
            items.append(_app_state(app))
        codes = BackupCodeDevice.objects.filter(user=obj).only("digests").first()
        left = len(codes.digests) if codes is not None else 0
        items.append(_html(_("Backup codes: %(count)s unused."), count=left))
        keys = list(WebAuthnDevice.objects.filter(user=obj).order_by("created_at", "pk"))
        if not keys:
            items.append(_html(_("Security keys: none.")))
        named = fido_metadata.models_named(key.aaguid for key in keys)  # one query for all
        for key in keys:
            values = {
                "name": key.name,
                "added": _when(key.created_at),
                "model": _key_model(key, named),
            }
            if key.last_used_at:
                items.append(
                    _html(
                        _(
                            "Security key “%(name)s”: added %(added)s, last used %(used)s; "
                            "%(model)s."
                        ),
                        used=_when(key.last_used_at),
                        **values,
                    )
                )
            else:
                items.append(
                    _html(
                        _("Security key “%(name)s”: added %(added)s, never used; %(model)s."),
                        **values,
                    )
                )
        policies = []
        if state.keys_only:
            policies.append(
                _("only a session confirmed with a security key opens more than their account page")
            )
        if state.attestation:
            policies.append(_("their keys must prove an approved model"))
        items.append(
            _html(
                _("Policies for this account: %(policies)s."),
                policies="; ".join(policies) if policies else _("none beyond the second factor"),
            )
        )
        # An unfinished set-up (or stray backup codes) is still something to reset.
        if reset and (keys or mfa.has_any_device(obj)):
            items.append(
                _html(
                    _(
                        '<a href="%(url)s">Reset it…</a>: removes the app, backup codes and '
                        "security keys, and signs them out everywhere."
                    ),
                    url=reverse("admin:accounts_user_mfa_reset", args=[obj.pk]),
                )
            )
        return format_html(
            '<ul class="second-factors">{}</ul>',
            format_html_join("", "<li>{}</li>", ((item,) for item in items)),
        )

    @admin.display(description=gettext_lazy("Second factor"))
    def second_factor_summary(self, obj: User) -> str:
        """The list's column: an app, how many keys and how many of them approved (from
        the changelist's annotations, get_queryset)."""
        app = getattr(obj, "mfa_app", None)
        keys = getattr(obj, "mfa_keys", None)
        approved = getattr(obj, "mfa_approved_keys", None)
        if app is None or keys is None or approved is None:
            return "-"
        # Translators: the account list's second-factor column: an authenticator app.
        parts = [_("app")] if app else []
        if approved:
            parts.append(
                ngettext(
                    "%(count)d key (%(approved)d approved)",
                    "%(count)d keys (%(approved)d approved)",
                    keys,
                )
                % {"count": keys, "approved": approved}
            )
        elif keys:
            parts.append(ngettext("%(count)d key", "%(count)d keys", keys) % {"count": keys})
        return ", ".join(parts) or _("none")

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        """The list, with each account's second factors counted in the same query (three
        subqueries per row shown, each on an indexed user column); other pages as before."""
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match is None or match.url_name != "accounts_user_changelist":
            return queryset
        keys = WebAuthnDevice.objects.filter(user=OuterRef("pk"))
        # WebAuthnDevice.approved, in SQL: attested, of a model still on the list, and not
        # one the FIDO metadata reports compromised.
        approved = keys.filter(attested=True).annotate(model=Lower("aaguid"))
        allowed = settings.PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS
        if allowed:
            approved = approved.filter(model__in=allowed)
        compromised = FidoModel.objects.filter(status__in=COMPROMISED).values("aaguid")
        approved = approved.exclude(model__in=compromised)
        return queryset.annotate(
            mfa_app=Exists(TotpDevice.objects.filter(user=OuterRef("pk"), confirmed=True)),
            mfa_keys=_count(keys),
            mfa_approved_keys=_count(approved),
        )

    @admin.display(description=gettext_lazy("Password"))
    def password_state(self, obj: User) -> str:
        """Whether the account has a password, without Django's button to the password
        page, for a viewer that page refuses (get_fieldsets)."""
        if obj.has_usable_password():
            # Translators: an account's password, when it has one.
            return _("Set.")
        return _("No password set.")

    def get_urls(self) -> list[Any]:
        extra = [
            path(
                "<path:object_id>/two-factor/reset/",
                self.admin_site.admin_view(self.mfa_reset_view),
                name="accounts_user_mfa_reset",
            )
        ]
        return extra + super().get_urls()

    def mfa_reset_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A person lost their phone and their backup codes: remove their second factor so
        they set up a new one at their next sign-in. Confirmed on a page, audited; decided
        and done in one transaction, under the account's row lock (get_object)."""
        with transaction.atomic():
            return self._mfa_reset(request, object_id)

    def _mfa_reset(self, request: HttpRequest, object_id: str) -> HttpResponse:
        target = self.get_object(request, unquote(object_id))
        if target is None:
            raise Http404
        actor = request.user
        if not isinstance(actor, User) or not mfa.may_reset(actor, target):
            raise PermissionDenied
        change_url = reverse("admin:accounts_user_change", args=[target.pk])
        if request.method == "POST":
            removed = mfa.second_factor_reset(
                actor=actor, target=target, source_address=client_address(request)
            )
            done = (
                _(
                    "The second factor of %(username)s is reset and they are signed out "
                    "everywhere: they set up a new one at their next sign-in."
                )
                if removed
                else _(
                    "%(username)s had no second factor to reset; they are signed out everywhere."
                )
            )
            self.message_user(request, done % {"username": target.get_username()}, messages.SUCCESS)
            return redirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Reset second factor"),
            "target": target,
            "opts": self.opts,
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/accounts/mfa_reset.html", context)

    def get_form(
        self, request: HttpRequest, obj: User | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm[User]]:
        """Whoever unticks "Active" learns what follows for the person's certificates."""
        form = _for(super().get_form(request, obj, change=change, **kwargs), request)
        hours = settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS
        if "is_active" in form.base_fields:
            form.base_fields["is_active"].help_text = (
                _(
                    "Unselect this instead of deleting accounts: the person is signed out "
                    "everywhere and leaves the directory, and their valid certificates are "
                    "revoked %(hours)s later (by the scheduled task, where beat runs) unless "
                    "the account is reactivated before then."
                )
                % {"hours": plurals.hours(hours)}
                if hours is not None
                else _(
                    "Unselect this instead of deleting accounts: the person is signed out "
                    "everywhere and leaves the directory."
                )
            )
        if "email" in form.base_fields and hours is not None:
            form.base_fields["email"].help_text = _(
                "The address certificates are issued for. Change it and the person's valid "
                "certificates for the old address are revoked %(hours)s later; they are told "
                "by e-mail and can renew for the new one."
            ) % {"hours": plurals.hours(hours)}
        return form

    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "organizational_unit",
        "is_staff",
        "second_factor_summary",
    )

    search_help_text = gettext_lazy(
        "Name, user name, e-mail or unit; accents and case do not matter."
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[User], search_term: str
    ) -> tuple[QuerySet[User], bool]:
        """The user name exactly (any case), or every word in the directory's folded search
        text (names, e-mail and unit), both indexed on PostgreSQL: Django's icontains over
        four columns read all 500,000 accounts of the directory benchmark (0.3 s)."""
        text = search_term.strip()
        if not text:
            return queryset, False
        words = Q()
        for word in query_words(text):  # the directory's own matching
            words &= Q(directory_search__contains=word_pattern(word))
        return queryset.filter(words | Q(username__iexact=text)), False

    @method_decorator(sensitive_post_parameters())
    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """An administrator who sets someone's password can then sign in as them: audited
        as account.password_set, in the transaction that stores it. Only this page is
        audited, not every write of the hash: Django re-hashes on sign-in when its hasher
        settings change, which would bury the events that matter."""
        with transaction.atomic():
            target = self.get_object(request, unquote(id))
            response = super().user_change_password(request, id, form_url)
            if target is not None and request.method == "POST":
                stored = (
                    User.objects.filter(pk=target.pk).values_list("password", flat=True).first()
                )
                if stored is not None and stored != target.password:
                    target.password = stored
                    audit_record(
                        action="account.password_set",
                        actor=request.user,
                        target=target,
                        source_address=client_address(request),
                        # Never the hash; whether the account can still sign in with one.
                        detail={"usable": target.has_usable_password(), "source": "admin"},
                    )
        return response


def _html(message: str, **values: Any) -> SafeString:
    """A translated sentence with markup, its values escaped as format_html escapes them:
    %-placeholders, which translators keep and msgfmt checks (format_html's {} neither).
    The sentence itself is trusted, as a template is."""
    return mark_safe(message % {name: conditional_escape(value) for name, value in values.items()})  # noqa: S308


def _app_state(app: TotpDevice) -> SafeString:
    """The authenticator app's line: whole sentences, one for each case, for the translators."""
    when = _when(app.created_at)
    if app.last_used_at:
        used = _when(app.last_used_at)
        if app.confirmed:
            return _html(
                _("Authenticator app: confirmed, set up %(when)s, last used %(used)s."),
                when=when,
                used=used,
            )
        return _html(
            _("Authenticator app: set-up not finished, started %(when)s, last used %(used)s."),
            when=when,
            used=used,
        )
    if app.confirmed:
        return _html(_("Authenticator app: confirmed, set up %(when)s."), when=when)
    return _html(_("Authenticator app: set-up not finished, started %(when)s."), when=when)


def _when(moment: Any) -> str:
    # Translators: when a second factor was set up or used, for one set up before that was recorded.
    return date_format(timezone.localtime(moment), "Y-m-d H:i T") if moment else _("earlier")


def _key_model(key: WebAuthnDevice, named: dict[str, FidoModel]) -> str:
    """What a key proved of its model when it was added, and whether that model counts
    today (PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS may have changed since, and the FIDO metadata
    may report it compromised); the model named where the metadata names it."""
    model = fido_metadata.label(key.aaguid, named)
    reported = fido_metadata.compromise(named.get(key.aaguid.lower()))
    if not key.attested:
        values = {"format": key.attestation_format or _("none"), "model": model}
        claims = bool(key.aaguid and key.aaguid != _NO_MODEL)
        if claims and reported:
            return _html(
                _(
                    "not attested (attestation %(format)s, claims model %(model)s): model not "
                    "proved; the FIDO Alliance reports the model as %(reported)s"
                ),
                reported=reported,
                **values,
            )
        if claims:
            return _html(
                _(
                    "not attested (attestation %(format)s, claims model %(model)s): model "
                    "not proved"
                ),
                **values,
            )
        if reported:
            return _html(
                _(
                    "not attested (attestation %(format)s): model not proved; the FIDO "
                    "Alliance reports the model as %(reported)s"
                ),
                reported=reported,
                **values,
            )
        return _html(_("not attested (attestation %(format)s): model not proved"), **values)
    values = {"format": key.attestation_format, "model": model}
    if key.approved:
        return _html(_("attested (%(format)s), model %(model)s: approved model"), **values)
    if reported:
        return _html(
            _(
                "attested (%(format)s), model %(model)s: not approved: the FIDO Alliance "
                "reports it as %(reported)s"
            ),
            reported=reported,
            **values,
        )
    return _html(
        _("attested (%(format)s), model %(model)s: model no longer on the approved list"),
        **values,
    )


# The AAGUID of a key that names no model (py_webauthn's text for sixteen zero bytes).
_NO_MODEL = "00000000-0000-0000-0000-000000000000"


def _count(devices: QuerySet[Any]) -> Coalesce:
    """How many rows of ``devices`` (one person's, filtered on OuterRef("pk")): 0, not
    NULL, where there are none."""
    counted = devices.order_by().values("user").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)
