"""CertificateTemplate.approver_group: the group whose RA officers decide the template's
requests (empty: every officer, as before). A nullable column on a small table, added in
one short step; every existing template keeps every officer as its approvers.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("enrollment", "0040_approval_notice_delivery"),
    ]

    operations = [
        migrations.AddField(
            model_name="certificatetemplate",
            name="approver_group",
            field=models.ForeignKey(
                blank=True,
                help_text=(
                    "Who approves or rejects this template's requests. Empty: every RA "
                    "officer. A group: only the RA officers in it (and superusers); the "
                    "other officers see the requests read-only and are not mailed about "
                    "them. A group with no active RA officer in it leaves the requests "
                    "waiting: the RA console and /health/ warn of it."
                ),
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="approver_templates",
                to="auth.group",
                verbose_name="approvers",
            ),
        ),
    ]
