"""Web pages of the directory: /directory/."""

from django.urls import path, re_path

from directory import views

app_name = "directory"

FINGERPRINT = r"(?P<fingerprint>[0-9A-Fa-f]{64})"

urlpatterns = [
    path("", views.search, name="search"),
    re_path(rf"^{FINGERPRINT}/$", views.certificate_detail, name="certificate"),
    re_path(
        rf"^{FINGERPRINT}\.(?P<fmt>{'|'.join(views.DOWNLOADS)})$",
        views.certificate_download,
        name="download",
    ),
]
