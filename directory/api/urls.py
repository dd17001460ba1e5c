"""Lookup API under /api/v1/directory/."""

app_name = "directory-api"

urlpatterns: list = []
