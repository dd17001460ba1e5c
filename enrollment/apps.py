from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class EnrollmentConfig(AppConfig):
    name = "enrollment"
    verbose_name = _("Enrollment (certificate authority)")

    def ready(self) -> None:
        from enrollment import (  # noqa: F401 - checks register themselves
            change_audit,
            checks,
            recent_sign_in,
            services,
        )

        change_audit.connect()  # role group memberships are audited wherever they change
        services.api_token_rows_connect()  # every API token gets its name and last-use row
        recent_sign_in.connect()  # minting an API token in a browser asks for a recent one
