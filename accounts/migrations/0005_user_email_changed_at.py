"""When each account's e-mail address last changed: the start of the grace period of the
certificates that name the old address (enrollment.outdated).

Empty for existing accounts: a certificate already naming an old address when you upgrade
starts its grace period when the hourly run first finds it, never in the past.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_user_deactivated_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="email_changed_at",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="When the e-mail address last changed, case aside; empty if never (derived).",
                null=True,
            ),
        ),
    ]
