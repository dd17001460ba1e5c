"""Root URLconf: web pages, the public repository, the API and its schema, the admin."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts.views import PortalLoginView
from enrollment import views as enrollment_views
from pkiportal.health import health_view, live_view
from pkiportal.i18n import choose_language
from pkiportal.metrics import metrics_view


def page_not_found_view(request: HttpRequest) -> HttpResponse:
    raise Http404()


urlpatterns = [
    path("", enrollment_views.home, name="home"),
    # The enrolment API first: Django tries the patterns in order, and each include
    # passed on the way raises and catches a Resolver404 (the web pages' "" include
    # tries all its patterns), ~165,000 instructions of every API call. No pattern
    # above it took an api/v1/ path (tests/test_api_edge.py), so routing is the same.
    path("api/v1/", include("enrollment.api.urls")),
    # Sign-in and sign-out only: passwords are the directory's or the service desk's to
    # reset. Django's password reset would let whoever reads an account's mailbox take it
    # over, unaudited, and its password change checks the old password outside django-axes.
    # Then the second step (accounts.views.verify) for whoever needs one.
    path("accounts/login/", PortalLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", include("accounts.urls")),
    path("language/", choose_language, name="choose-language"),
    path("ra/", include("enrollment.ra_urls")),
    path("", include("enrollment.urls")),
    path("directory/", include("directory.web_urls")),
    path("pki/", include("directory.urls")),
    # EST, RFC 7030 (enrollment/est.py): 404 unless PKIPORTAL_EST_ENABLED.
    path(".well-known/est/", include("enrollment.est_urls")),
    path("api/v1/directory/", include("directory.api.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file: no inline script.
    path(
        "api/v1/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"
    ),
    # The admin's own password change has the same flaw: not mounted either.
    path("admin/password_change/", page_not_found_view),
    path("admin/password_change/done/", page_not_found_view),
    path("admin/", admin.site.urls),
    path("health/", health_view, name="health"),
    path("health/live/", live_view, name="health-live"),
    path("metrics", metrics_view, name="metrics"),  # Prometheus' default path
]

# JSON under /api/, the portal's pages elsewhere (pkiportal/api.py says why).
handler400 = "pkiportal.api.bad_request"
handler403 = "pkiportal.api.permission_denied"
handler404 = "pkiportal.api.page_not_found"
handler500 = "pkiportal.api.server_error"

if "mozilla_django_oidc" in settings.INSTALLED_APPS:
    # Single sign-on, when configured (README.md, "Company directory and single sign-on").
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))
