"""Web pages of the CA side."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from enrollment.models import Certificate, CertificateAuthority


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    context: dict[str, object] = {
        "authorities": CertificateAuthority.objects.select_related("parent"),
    }
    if request.user.is_authenticated:
        context["my_certificates"] = Certificate.objects.owned_by(request.user).select_related(
            "template", "ca"
        )[:20]
    return render(request, "enrollment/home.html", context)
