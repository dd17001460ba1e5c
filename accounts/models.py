"""The account: the only source of what a certificate says about its holder.

A custom user model from the start, so a directory (LDAP) or single sign-on (OIDC)
backend can map its attributes straight onto these fields.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django_otp.models import Device, ThrottlingMixin, TimestampMixin
from django_otp.oath import TOTP

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower, Trim, Upper
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext_lazy as _

from accounts.search import directory_search_text

# The longest a person waits after wrong codes (django-otp doubles the wait without end:
# whoever has the password could lock an officer out for weeks). 2**10 s passes it at the
# eleventh wrong code in a row, LOCKOUT_FAILURES, audited once (accounts.mfa.check_code).
MAX_THROTTLE_SECONDS = 15 * 60
LOCKOUT_FAILURES = 11
# Past the lock-out, one guess every MAX_THROTTLE_SECONDS goes on for ever (the person
# must not be locked out of their own account): told again after each day's worth.
LOCKOUT_REMINDER_FAILURES = 24 * 3600 // MAX_THROTTLE_SECONDS


def capped_throttle(device: Any, allowed: bool, info: Any) -> tuple[bool, Any]:
    """django-otp's throttle answer with the wait capped at MAX_THROTTLE_SECONDS."""
    if allowed or not info or info.get("locked_until") is None:
        return allowed, info
    cap = device.throttling_failure_timestamp + timedelta(seconds=MAX_THROTTLE_SECONDS)
    if info["locked_until"] <= cap:
        return allowed, info
    if timezone.now() >= cap:
        return True, None
    return False, {**info, "locked_until": cap}


# An account's address as the portal compares addresses (services.account_email): the
# expression of user_email_idx, which every lookup by address uses.
EMAIL_KEY = Lower(Trim("email"))

# The fields directory_search is derived from.
DIRECTORY_SOURCE_FIELDS = frozenset(
    {"username", "first_name", "last_name", "display_name", "email", "organizational_unit"}
)


class User(AbstractUser):
    display_name = models.CharField(
        max_length=200,
        blank=True,
        verbose_name=_("display name"),
        help_text=_("How the person is shown; default: given + surname."),
    )
    organizational_unit = models.CharField(
        max_length=200, blank=True, verbose_name=_("organizational unit")
    )
    directory_search = models.TextField(
        blank=True,
        default="",
        editable=False,
        verbose_name=_("directory search"),
        help_text=_("Folded name, e-mail and unit the directory matches and sorts by (derived)."),
    )
    deactivated_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        verbose_name=_("deactivated at"),
        help_text=_("When the account last became inactive; empty while it is active (derived)."),
    )
    email_changed_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        verbose_name=_("email changed at"),
        help_text=_("When the e-mail address last changed, case aside; empty if never (derived)."),
    )
    language = models.CharField(
        max_length=16,
        blank=True,
        default="",
        # In the database too, as session_generation: rows a bulk load or a provisioning
        # script inserts without the column still get one.
        db_default="",
        verbose_name=_("language"),
        help_text=_(
            "The language the person chose for pages and mail (a code of LANGUAGES); "
            "empty: pages follow the browser, mail PKIPORTAL_LANGUAGE."
        ),
    )
    session_generation = models.PositiveIntegerField(
        default=0,
        # In the database too: rows inserted by SQL (a bulk load, a provisioning script)
        # that does not know the column still get one.
        db_default=0,
        editable=False,
        verbose_name=_("session generation"),
        help_text=_("Raised each time all the person's sessions are ended (accounts.sessions)."),
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        indexes = [
            # Sorted directory pages and keyset pagination; PostgreSQL also has a pg_trgm
            # GIN index on the same column for substring search (migration 0002).
            models.Index(fields=["directory_search", "id"], name="user_directory_sort_idx"),
            # The RA console finds certificates by their holder's user name, in any case.
            models.Index(Upper("username"), name="user_username_upper_idx"),
            # Whether another account has an address (services.address_taken), read at
            # every enrolment: the expression hotsql's counts compare.
            models.Index(EMAIL_KEY, name="user_email_idx"),
            # Leavers whose certificates are due for revocation (enrollment.leavers): the
            # few inactive accounts, not every account, so the hourly run and the RA page
            # stay cheap in a large directory.
            models.Index(
                fields=["deactivated_at"],
                condition=Q(is_active=False),
                name="user_deactivated_idx",
            ),
        ]

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A derived column, not an invariant: kept here so every writer (admin, SSO/LDAP
        # sync, commands) keeps it current. Bulk writers must set it themselves.
        self.directory_search = directory_search_text(
            username=self.get_username() or "",
            first_name=self.first_name,
            last_name=self.last_name,
            display_name=self.display_name,
            email=self.email,
            organizational_unit=self.organizational_unit,
        )
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and DIRECTORY_SOURCE_FIELDS.intersection(update_fields):
            update_fields = kwargs["update_fields"] = {*update_fields, "directory_search"}
        # Derived too, for the same reason: the grace period before a leaver's certificates
        # are revoked (enrollment.leavers) starts when the account stops being active, and
        # that of certificates naming an old address (enrollment.outdated) when the address
        # changes, by whichever path (the admin, an LDAP/OIDC sync, code). Only a save that
        # writes is_active (email) can change them; a sign-in saving last_login alone leaves
        # them be.
        writes_active = update_fields is None or "is_active" in update_fields
        writes_email = update_fields is None or "email" in update_fields
        stored = self._stored_row() if writes_active or writes_email else None
        derived = set()
        if writes_active:
            if self.is_active:
                self.deactivated_at = None
            else:
                self.deactivated_at = _stored_deactivation(stored) or timezone.now()
            derived.add("deactivated_at")
        address_changed = (
            writes_email and stored is not None and _address_changed(stored[2], self.email)
        )
        if address_changed:
            self.email_changed_at = timezone.now()
            derived.add("email_changed_at")
        if update_fields is not None and derived:
            kwargs["update_fields"] = {*kwargs["update_fields"], *derived}
        switched_off = writes_active and not self.is_active and stored is not None and stored[0]
        switched_on = writes_active and self.is_active and stored is not None and not stored[0]
        if (
            kwargs.get("update_fields") is None
            and not self._state.adding
            and not kwargs.get("force_insert")
        ):
            # Only accounts.sessions writes the session generation (with an F() update): an
            # instance read before someone's sessions were ended (an admin form, a directory
            # sync) must not write the old number back, which would revive those sessions.
            kwargs["update_fields"] = [
                field.name
                for field in self._meta.concrete_fields
                if not field.primary_key and field.name != "session_generation"
            ]
        super().save(*args, **kwargs)
        if switched_off:
            # A leaver is signed out everywhere, and stays so if the account is switched
            # back on: their sessions are deleted, not merely refused while it is off.
            from accounts.sessions import sessions_end

            sessions_end(self)
        if address_changed or switched_off or switched_on:
            # The old address's certificates (a leaver's: all of them) leave the person's
            # LDAP/AD entry, and come back on a change back (a reactivation), once this
            # commits, not at the next reconciliation: Outlook would encrypt to them
            # meanwhile. Nothing when publication is off; a bulk update() is still found by
            # the reconciliation's diff.
            from enrollment.ldap_publish import publish_on_commit

            publish_on_commit(self.pk)

    def get_session_auth_hash(self) -> str:
        """No session holds an inactive account, whichever backend signed it in: Django's
        ModelBackend refuses one, but mozilla-django-oidc's and django-auth-ldap's
        get_user() load it, and a QuerySet.update() switching it off deletes no session.
        An empty hash never verifies, so Django's get_user() flushes such a session."""
        if not self.is_active:
            return ""
        return super().get_session_auth_hash()

    def get_session_auth_fallback_hash(self) -> Iterator[str]:
        if self.is_active:
            yield from super().get_session_auth_fallback_hash()

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        """Django's HMAC of the password, which every request's session must carry (its
        get_user() checks it), bound to the session generation as well: raising it
        (accounts.sessions.sessions_end) refuses every session signed in before, wherever
        it is stored or comes back from. Generation 0 keeps Django's own value, so sessions
        from before the generation existed stay signed in."""
        if self.session_generation == 0:
            django_hash: str = super()._get_session_auth_hash(secret=secret)  # type: ignore[misc]  # Django's, not in django-stubs
            return django_hash
        return salted_hmac(
            "accounts.models.User.get_session_auth_hash",
            f"{self.session_generation}:{self.password}",
            secret=secret,
            algorithm="sha256",
        ).hexdigest()

    def _stored_row(self) -> tuple[bool, datetime | None, str] | None:
        """The stored is_active, deactivated_at and email (one read), or None for a new
        account. Compared with the stored row, not with what this instance remembered: an
        instance read before a change made elsewhere (QuerySet.update(), another process)
        would otherwise cut a grace period short or miss an address change."""
        if self.pk is None:
            return None
        stored = type(self)._base_manager.filter(pk=self.pk)
        return stored.values_list("is_active", "deactivated_at", "email").first()

    def get_full_name(self) -> str:
        return self.display_name or super().get_full_name() or self.get_username()


def _stored_deactivation(stored: tuple[bool, datetime | None, str] | None) -> datetime | None:
    """When the stored account was switched off, if it is off: the clock of a save that
    switches it off starts now, whatever this instance remembered. An account switched back
    on by QuerySet.update(), or an instance read before a reactivation, still carries the
    old time, which would cut the grace period short."""
    if stored is None or stored[0]:
        return None
    return stored[1]


def _address_changed(old: str | None, new: str | None) -> bool:
    """Bob@example.com and bob@example.com are one mailbox: certificates carry addresses
    lower-cased, so a change of case alone outdates none of them."""
    return (old or "").strip().lower() != (new or "").strip().lower()


class TotpDevice(TimestampMixin, ThrottlingMixin, Device):
    """An authenticator app (RFC 6238 TOTP) whose seed is stored sealed, never in clear.

    django-otp's own TOTPDevice keeps the seed as clear hex, which hands every database
    reader (a backup, a replica, a support dump) everyone's second factor. Here the seed is
    a Fernet token under a key the database does not hold (accounts.mfa.seal); the maths,
    throttling and replay protection (last_t) are django-otp's.
    """

    STEP = 30  # seconds; what every authenticator app assumes
    DIGITS = 6
    TOLERANCE = 1  # one step either side: a phone's clock a little off still works

    # Only an annotation (Django's is still django-otp's DeviceManager): that class is not
    # generic, so mypy would read every query of ours as Any.
    objects: ClassVar[models.Manager[TotpDevice]]  # type: ignore[assignment]

    sealed_key = models.BinaryField(
        editable=False, verbose_name=_("sealed key"), help_text=_("The seed, sealed (Fernet).")
    )
    drift = models.SmallIntegerField(default=0, editable=False, verbose_name=_("drift"))
    last_t = models.BigIntegerField(
        default=-1,
        editable=False,
        verbose_name=_("last t"),
        help_text=_("Time step of the last accepted code: no code at or before it is accepted."),
    )

    class Meta(Device.Meta):
        verbose_name = _("authenticator app")
        verbose_name_plural = _("authenticator apps")
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=Q(confirmed=True), name="totp_one_confirmed_per_user"
            ),
        ]

    # Set by verify_token: the refused code was one of this device's codes at or before
    # last_t (used already, or passed over by a newer one), not a guess.
    replayed = False

    def verify_token(self, token: Any) -> bool:
        from accounts import mfa

        self.replayed = False
        allowed, _ = self.verify_is_allowed()
        if not allowed:
            return False
        text = str(token).strip().replace(" ", "")
        verified = False
        if len(text) == self.DIGITS and text.isascii() and text.isdigit():
            totp = TOTP(mfa.unseal(bytes(self.sealed_key)), self.STEP, 0, self.DIGITS, self.drift)
            totp.time = time.time()
            # min_t: a code already used (or an older one) is refused: no replay.
            verified = totp.verify(int(text), self.TOLERANCE, self.last_t + 1)
            if verified:
                self.last_t = totp.t()
                self.drift = totp.drift
                self.throttle_reset(commit=False)
                self.set_last_used_timestamp(commit=False)
                self.save()
            elif self.last_t >= 0 and totp.verify(int(text), self.TOLERANCE):
                # Right for a step at or before last_t: a client sending the code it just
                # used again. Refused all the same (no replay), but not counted as a wrong
                # code: it is no guess, and counting it locked the person's sign-in. A
                # guesser gains nothing: such a code never verifies again (last_t only
                # grows), and at most 2 * TOLERANCE + 1 of the 10**6 codes are such codes.
                self.replayed = True
                return False
        if not verified:
            self.throttle_increment(commit=True)
        return verified

    def get_throttle_factor(self) -> int:
        return 1  # 1, 2, 4, 8 ... seconds after successive wrong codes

    def verify_is_allowed(self) -> tuple[bool, Any]:
        return capped_throttle(self, *super().verify_is_allowed())  # type: ignore[no-untyped-call]  # django-otp is unannotated


class BackupCodeDevice(TimestampMixin, ThrottlingMixin, Device):
    """One-time backup codes for a lost phone, stored only as salted SHA-256 digests.

    A code carries 80 random bits, so a fast salted hash is enough: no database reader
    can search that space, and checking ten of them costs microseconds, not seconds.
    """

    objects: ClassVar[models.Manager[BackupCodeDevice]]  # type: ignore[assignment]  # as TotpDevice's

    digests = models.JSONField(
        default=list,
        editable=False,
        verbose_name=_("digests"),
        help_text=_("salt$sha256 of each code."),
    )

    class Meta(Device.Meta):
        verbose_name = _("backup codes")
        verbose_name_plural = _("backup codes")
        constraints = [
            models.UniqueConstraint(fields=["user"], name="backup_codes_one_set_per_user"),
        ]

    def verify_token(self, token: Any) -> bool:
        from accounts import mfa

        allowed, _ = self.verify_is_allowed()
        if not allowed:
            return False
        match = mfa.backup_code_match(str(token), self.digests)
        if match is None:
            self.throttle_increment(commit=True)
            return False
        self.digests = [digest for digest in self.digests if digest != match]  # once only
        self.throttle_reset(commit=False)
        self.set_last_used_timestamp(commit=False)
        self.save()
        return True

    def get_throttle_factor(self) -> int:
        return 1

    def verify_is_allowed(self) -> tuple[bool, Any]:
        return capped_throttle(self, *super().verify_is_allowed())  # type: ignore[no-untyped-call]  # django-otp is unannotated


def model_allowed(aaguid: str) -> bool:
    """Whether an attested key of this model (AAGUID) counts as approved: any model the
    roots vouch for, or, with PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS, one still on that list;
    never one the imported FIDO metadata reports compromised (accounts.fido_metadata)."""
    from accounts import fido_metadata

    allowed = settings.PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS
    if allowed and aaguid.lower() not in allowed:
        return False
    return aaguid.lower() not in fido_metadata.compromised_models()


class FidoMetadataImport(models.Model):
    """A FIDO Metadata Service BLOB imported (manage.py import_fido_metadata): its serial
    number, which a later import must exceed (no rollback to an older BLOB, which may
    predate a compromise), and the date the service promised the next one by."""

    number = models.PositiveBigIntegerField(unique=True, editable=False, verbose_name=_("number"))
    next_update = models.DateField(editable=False, verbose_name=_("next update"))
    imported_at = models.DateTimeField(
        default=timezone.now, editable=False, verbose_name=_("imported at")
    )
    models_count = models.PositiveIntegerField(
        default=0, editable=False, verbose_name=_("models count")
    )

    class Meta:
        verbose_name = _("FIDO metadata import")
        verbose_name_plural = _("FIDO metadata imports")
        get_latest_by = "number"

    def __str__(self) -> str:
        return f"FIDO metadata no. {self.number}"


class FidoModel(models.Model):
    """A security-key model as the last imported FIDO metadata describes it: its name, the
    latest status the FIDO Alliance reports for it and its maker's attestation roots.
    Replaced whole by each import."""

    aaguid = models.CharField(max_length=36, unique=True, editable=False, verbose_name=_("aaguid"))
    description = models.CharField(
        max_length=200, blank=True, editable=False, verbose_name=_("description")
    )
    status = models.CharField(
        max_length=40,
        blank=True,
        db_index=True,  # the compromised models are read by status
        editable=False,
        verbose_name=_("status"),
        help_text=_("The latest status report's (FIDO_CERTIFIED_L1, REVOKED ...)."),
    )
    status_date = models.DateField(
        null=True, blank=True, editable=False, verbose_name=_("status date")
    )
    attestation_roots = models.JSONField(
        default=list,
        blank=True,
        editable=False,
        verbose_name=_("attestation roots"),
        help_text=_("Base64 DER, as the metadata has them."),
    )

    class Meta:
        verbose_name = _("FIDO key model")
        verbose_name_plural = _("FIDO key models")

    def __str__(self) -> str:
        return self.description or self.aaguid


class SecondFactorKind(models.TextChoices):
    """What confirmed a sign-in's second factor, as an API token minted in it records it
    (enrollment.models.ApiToken): the attestation policy counts only some keys."""

    NONE = "", _("none recorded")
    APP = "app", _("authenticator app")
    BACKUP_CODE = "backup_code", _("backup code")
    SECURITY_KEY = "security_key", _("security key, model not proved")
    ATTESTED_KEY = "attested_key", _("security key, model proved")
    SINGLE_SIGN_ON = "single_sign_on", _("single sign-on")


class WebAuthnDevice(TimestampMixin, ThrottlingMixin, Device):
    """A security key or passkey (WebAuthn): a public key, never a secret, so nothing here
    needs sealing. The person names it; a person may hold several (a spare key in a drawer).

    ``attested``: the key proved its model (WebAuthn attestation, verified against the
    configured roots) when it was added; only such keys unlock a role the attestation policy
    covers (accounts.mfa.session_needs_approved_key), while their model stays on the list
    (``approved``). Keys added before the policy, or by someone it did not cover, are not.

    ``sign_count`` is the authenticator's counter: an assertion whose counter does not grow
    (when either is non-zero) comes from a copy of the key and is refused (accounts.passkeys).
    Refused answers throttle all of the person's keys together, as wrong codes an app.
    """

    MAX_PER_PERSON = 10

    objects: ClassVar[models.Manager[WebAuthnDevice]]  # type: ignore[assignment]  # as TotpDevice's

    credential_id = models.CharField(
        max_length=1400,  # a credential id is at most 1023 bytes: 1364 in base64url
        unique=True,
        editable=False,
        verbose_name=_("credential id"),
        help_text=_("The credential id, base64url."),
    )
    public_key = models.BinaryField(
        editable=False, verbose_name=_("public key"), help_text=_("The COSE public key.")
    )
    sign_count = models.BigIntegerField(default=0, editable=False, verbose_name=_("sign count"))
    transports = models.JSONField(
        default=list, blank=True, editable=False, verbose_name=_("transports")
    )
    aaguid = models.CharField(
        max_length=36, blank=True, default="", editable=False, verbose_name=_("aaguid")
    )
    attested = models.BooleanField(
        default=False,
        editable=False,
        verbose_name=_("attested"),
        help_text=_("Its attestation chained to PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS when added."),
    )
    attestation_format = models.CharField(
        max_length=32,
        blank=True,
        default="",
        editable=False,
        verbose_name=_("attestation format"),
        help_text=_("The attestation statement's format the key sent (packed, tpm, none ...)."),
    )

    class Meta(Device.Meta):
        verbose_name = _("security key")
        verbose_name_plural = _("security keys")

    @property
    def approved(self) -> bool:
        """Attested, and of a model still on PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS when there is
        such a list: a model taken off the list stops counting at once."""
        return self.attested and model_allowed(self.aaguid)

    def verify_token(self, token: Any) -> bool:
        return False  # no code to type: accounts.passkeys checks its signed assertions

    def get_throttle_factor(self) -> int:
        # A forged answer cannot guess its way in (it is a signature); the wait after
        # refused answers keeps whoever has the password from flooding the audit trail.
        return 1

    def verify_is_allowed(self) -> tuple[bool, Any]:
        return capped_throttle(self, *super().verify_is_allowed())  # type: ignore[no-untyped-call]  # django-otp is unannotated


class AccountSession(AbstractBaseSession):
    """A browser session, stored with the account it is signed in as (Django's
    "extending database-backed session engines"): deleting a person's sessions goes by
    an indexed column instead of decoding every stored session (accounts.sessions).

    account_id is derived from the session's data each time the store writes the row
    (accounts.session_store), so it follows a sign-in, a key cycled by one, a
    password change and a sign-in as somebody else; empty while nobody is signed in. No
    foreign key: a session naming a deleted account must still save (Django refuses its
    user anyway), and the sessions go with the account no later than they expire.
    """

    account_id = models.BigIntegerField(
        null=True, blank=True, db_index=True, editable=False, verbose_name=_("account id")
    )

    class Meta(AbstractBaseSession.Meta):
        # django-stubs types this Meta's names as str; Django's own are lazy too.
        verbose_name = _("browser session")  # type: ignore[assignment]
        verbose_name_plural = _("browser sessions")  # type: ignore[assignment]

    @classmethod
    def get_session_store_class(cls) -> type[SessionBase]:
        from accounts.session_store import SessionStore

        return SessionStore
