from django.conf import settings
from django.http import HttpRequest


def portal(request: HttpRequest) -> dict[str, str]:
    return {"organization_name": settings.PKIPORTAL_ORGANIZATION_NAME}
