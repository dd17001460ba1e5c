"""Lookup API under /api/v1/directory/."""

from django.urls import path

from directory.api.views import DirectoryLookupView

app_name = "directory-api"

urlpatterns = [path("", DirectoryLookupView.as_view(), name="lookup")]
