from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from accounts import mfa

        # Every sign-in starts the second step anew (and counts a trusted single sign-on).
        user_logged_in.connect(mfa.note_sign_in, dispatch_uid="pkiportal_mfa_sign_in")
