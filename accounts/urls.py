"""A person's own account pages: /account/ and its second factor."""

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("", views.overview, name="mfa-overview"),
    path("two-factor/verify/", views.verify, name="mfa-verify"),
    path("two-factor/setup/", views.setup, name="mfa-setup"),
    path("two-factor/backup-codes/", views.backup_codes_regenerate, name="mfa-backup-codes"),
    path("two-factor/remove/", views.remove, name="mfa-remove"),
]
