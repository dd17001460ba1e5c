"""The portal's URLs with the API mounted under /moved/ (test_api_paths)."""

from django.urls import include, path

urlpatterns = [path("moved/api/v1/", include("enrollment.api.urls"))]
