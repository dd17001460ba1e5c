"""API of the CA side under /api/v1/: enrolments, certificates, key recoveries, RA decisions,
API tokens."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from enrollment.api import views

app_name = "enrollment-api"

router = SimpleRouter()
router.register("enrollments", views.EnrollmentViewSet, basename="enrollment")
router.register("certificates", views.CertificateViewSet, basename="certificate")
router.register("requests", views.RequestViewSet, basename="request")
router.register("recoveries", views.RecoveryViewSet, basename="recovery")
router.register("rollouts", views.RolloutViewSet, basename="rollout")
router.register("mailboxes", views.MailboxViewSet, basename="mailbox")

urlpatterns = [
    path("auth/token/", views.TokenCreateView.as_view(), name="auth-token"),
    path("auth/logout/", views.TokenLogoutView.as_view(), name="auth-logout"),
    path("auth/logoutall/", views.TokenLogoutAllView.as_view(), name="auth-logoutall"),
    *router.urls,
]
