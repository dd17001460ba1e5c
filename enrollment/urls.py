"""Web pages of the CA side: /enroll/, /certificates/, /ra/, and /account/tokens/."""

from django.urls import path

from enrollment import token_views, views

app_name = "enrollment"

urlpatterns = [
    path("enroll/", views.enroll_index, name="enroll-index"),
    # Notifications link here: keep the name and the path.
    path("enroll/requests/<int:pk>/", views.request_detail, name="request-detail"),
    path("enroll/requests/<int:pk>/withdraw/", views.request_withdraw, name="request-withdraw"),
    path("enroll/<slug:slug>/", views.enroll, name="enroll"),
    path("certificates/", views.certificate_list, name="certificate-list"),
    path("certificates/<int:pk>/", views.certificate_detail, name="certificate-detail"),
    path(
        "certificates/<int:pk>/download/<slug:kind>/",
        views.certificate_download,
        name="certificate-download",
    ),
    path("certificates/<int:pk>/renew/", views.certificate_renew, name="certificate-renew"),
    path("certificates/<int:pk>/revoke/", views.certificate_revoke, name="certificate-revoke"),
    path("certificates/<int:pk>/recover/", views.certificate_recover, name="certificate-recover"),
    path("help/mail-clients/", views.help_mail_clients, name="help-mail-clients"),
    path("account/tokens/", token_views.token_list, name="token-list"),
    path("account/tokens/new/", token_views.token_create, name="token-create"),
    path("account/tokens/<int:pk>/revoke/", token_views.token_revoke, name="token-revoke"),
    path("account/tokens/revoke-all/", token_views.token_revoke_all, name="token-revoke-all"),
    path("ra/requests/", views.ra_requests, name="ra-requests"),
    path("ra/requests/<int:pk>/decide/", views.ra_decide, name="ra-decide"),
]
