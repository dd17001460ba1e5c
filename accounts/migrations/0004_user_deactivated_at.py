"""When each account became inactive: the start of a leaver's grace period (enrollment.leavers).

Accounts already inactive get the migration's time, not a guess from the past: their
certificates become due a full grace period after the upgrade, so upgrading never revokes
at once what nobody has looked at yet.
"""

from django.db import migrations, models
from django.utils import timezone


def start_the_clock_now(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    User.objects.filter(is_active=False, deactivated_at__isnull=True).update(
        deactivated_at=timezone.now()
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_username_upper_index"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="deactivated_at",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="When the account last became inactive; empty while it is active (derived).",
                null=True,
            ),
        ),
        migrations.RunPython(start_the_clock_now, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="user",
            index=models.Index(
                condition=models.Q(("is_active", False)),
                fields=["deactivated_at"],
                name="user_deactivated_idx",
            ),
        ),
    ]
