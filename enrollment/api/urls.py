"""API of the CA side under /api/v1/: enrolments and certificates."""

app_name = "enrollment-api"

urlpatterns: list = []
