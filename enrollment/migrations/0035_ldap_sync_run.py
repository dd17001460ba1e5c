"""The latest run of the leavers' sync with the sign-in directory (one row)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0034_certificate_queued_for_crl_at"),
    ]

    operations = [
        migrations.CreateModel(
            name="LdapSyncRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("ran_at", models.DateTimeField()),
                (
                    "source",
                    models.CharField(
                        choices=[
                            ("schedule", "Scheduled (beat)"),
                            ("command", "manage.py ldap_sync_leavers --confirm"),
                        ],
                        max_length=10,
                    ),
                ),
                (
                    "checked",
                    models.PositiveIntegerField(
                        default=0, help_text="Directory accounts looked up."
                    ),
                ),
                (
                    "found",
                    models.PositiveIntegerField(
                        default=0, help_text="Of those, found and enabled."
                    ),
                ),
                (
                    "gone",
                    models.PositiveIntegerField(
                        default=0,
                        help_text="Accounts the directory no longer has, or has disabled.",
                    ),
                ),
                (
                    "cap",
                    models.PositiveIntegerField(help_text="PKIPORTAL_LDAP_SYNC_MAX_PER_RUN then."),
                ),
                (
                    "held_back",
                    models.PositiveIntegerField(
                        default=0,
                        help_text="Accounts it did not deactivate because more were gone than the cap.",
                    ),
                ),
                ("deactivated", models.PositiveIntegerField(default=0)),
                ("failed", models.PositiveIntegerField(default=0)),
                (
                    "superusers",
                    models.JSONField(
                        blank=True,
                        default=list,
                        help_text="User names of superusers the directory no longer has: never deactivated.",
                    ),
                ),
                (
                    "error",
                    models.CharField(
                        blank=True, help_text="The last failure, if any.", max_length=500
                    ),
                ),
            ],
        ),
    ]
