"""Web pages of the CA side: /enroll/, /certificates/, /ra/."""

from django.urls import path

app_name = "enrollment"

urlpatterns: list = [
    # Placeholder until the enrolment pages land (issue 3); notifications link here.
    path("enroll/requests/<int:pk>/", lambda request, pk: None, name="request-detail"),
]
