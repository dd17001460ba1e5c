from django.apps import AppConfig


class EnrollmentConfig(AppConfig):
    name = "enrollment"
    verbose_name = "Enrollment (certificate authority)"

    def ready(self) -> None:
        from enrollment import change_audit, checks, services  # noqa: F401 - checks register themselves

        change_audit.connect()  # role group memberships are audited wherever they change
        services.api_token_rows_connect()  # every API token gets its name and last-use row
