"""Shared mailboxes: their table and their delegates (new, empty tables: no lock on any
existing one). Migration 0029 gives certificates and requests their mailbox column.
Reversing it while a shared mailbox exists is refused: their list would be lost."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def refuse_reverse_with_mailboxes(apps, schema_editor):
    count = apps.get_model("enrollment", "SharedMailbox").objects.count()
    if count:
        raise RuntimeError(
            f"Refusing to reverse the shared mailboxes: {count} exist. Nothing was changed."
        )


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0026_rollout_invitation_mail_attempts"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="SharedMailbox",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "email",
                    models.EmailField(
                        help_text="Lower-case; it is the certificates' common name (RFC 5280: at most 64).",
                        max_length=64,
                        unique=True,
                    ),
                ),
                (
                    "display_name",
                    models.CharField(
                        help_text="Shown in the portal and the directory, not in certificates.",
                        max_length=200,
                    ),
                ),
                ("is_active", models.BooleanField(default=True)),
                (
                    "deactivated_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="When it was switched off: its grace period starts.",
                        null=True,
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "created_by",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "delegates",
                    models.ManyToManyField(
                        blank=True, related_name="delegated_mailboxes", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "verbose_name": "shared mailbox",
                "verbose_name_plural": "shared mailboxes",
                "ordering": ["email"],
            },
        ),
        migrations.AddConstraint(
            model_name="sharedmailbox",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("deactivated_at__isnull", True), ("is_active", True)),
                    models.Q(("deactivated_at__isnull", False), ("is_active", False)),
                    _connector="OR",
                ),
                name="mailbox_deactivated_at_when_inactive",
            ),
        ),
        # Last, so that reversing runs it first, before anything is dropped.
        migrations.RunPython(migrations.RunPython.noop, refuse_reverse_with_mailboxes),
    ]
