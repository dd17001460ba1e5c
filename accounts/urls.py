"""A person's own account pages: /account/ and its second factor."""

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("", views.overview, name="mfa-overview"),
    path("sessions/sign-out-elsewhere/", views.sign_out_elsewhere, name="sign-out-elsewhere"),
    path("two-factor/verify/", views.verify, name="mfa-verify"),
    path("two-factor/setup/", views.setup, name="mfa-setup"),
    path("two-factor/backup-codes/", views.backup_codes_regenerate, name="mfa-backup-codes"),
    path("two-factor/remove/", views.remove, name="mfa-remove"),
    path("two-factor/security-keys/add/", views.passkey_setup, name="passkey-setup"),
    path(
        "two-factor/security-keys/register/options/",
        views.passkey_register_options,
        name="passkey-register-options",
    ),
    path("two-factor/security-keys/register/", views.passkey_register, name="passkey-register"),
    path(
        "two-factor/security-keys/authenticate/options/",
        views.passkey_authenticate_options,
        name="passkey-authenticate-options",
    ),
    path(
        "two-factor/security-keys/authenticate/",
        views.passkey_authenticate,
        name="passkey-authenticate",
    ),
    path("two-factor/security-keys/<int:pk>/remove/", views.passkey_remove, name="passkey-remove"),
]
