"""Root URLconf: web pages, the public repository, the API and its schema, the admin."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from enrollment import views as enrollment_views

urlpatterns = [
    path("", enrollment_views.home, name="home"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("enrollment.urls")),
    path("directory/", include("directory.web_urls")),
    path("pki/", include("directory.urls")),
    path("api/v1/", include("enrollment.api.urls")),
    path("api/v1/directory/", include("directory.api.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/", admin.site.urls),
]
