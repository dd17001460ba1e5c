"""The portal's URLs with mozilla-django-oidc's, as pkiportal.urls has them once OIDC is set."""

from django.urls import include, path

from pkiportal.urls import urlpatterns as portal_urlpatterns

urlpatterns = [*portal_urlpatterns, path("oidc/", include("mozilla_django_oidc.urls"))]
