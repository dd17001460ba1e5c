from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts")

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in
        from django.core.signals import request_finished, request_started

        from accounts import fido_metadata, mfa

        # Every sign-in starts the second step anew (and counts a trusted single sign-on).
        user_logged_in.connect(mfa.note_sign_in, dispatch_uid="pkiportal_mfa_sign_in")
        # The compromised key models, read once per request however many keys are weighed.
        request_started.connect(
            fido_metadata.request_started, dispatch_uid="pkiportal_fido_metadata_started"
        )
        request_finished.connect(
            fido_metadata.request_finished, dispatch_uid="pkiportal_fido_metadata_finished"
        )
