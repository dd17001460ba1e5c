from django.apps import AppConfig


class EnrollmentConfig(AppConfig):
    name = "enrollment"
    verbose_name = "Enrollment (certificate authority)"

    def ready(self) -> None:
        from enrollment import change_audit, checks  # noqa: F401 - checks register themselves

        change_audit.connect()  # role group memberships are audited wherever they change
