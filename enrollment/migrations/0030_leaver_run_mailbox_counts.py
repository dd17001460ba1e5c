"""The leavers' run counts deactivated shared mailboxes apart from accounts (one row)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0029_shared_mailbox_columns"),
    ]

    operations = [
        migrations.AddField(
            model_name="leaverrevocationrun",
            name="revoked_mailboxes",
            field=models.PositiveIntegerField(
                default=0, help_text="Deactivated shared mailboxes whose certificates it revoked."
            ),
        ),
        migrations.AddField(
            model_name="leaverrevocationrun",
            name="failed_mailboxes",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
