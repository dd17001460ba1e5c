"""RA pages under /ra/ (app "ra"). /ra/requests/ belongs to enrollment.urls (enrolment)."""

from django.urls import path

from enrollment import mailbox_views, ra_views, rollout_views

app_name = "ra"

urlpatterns = [
    path("", ra_views.console, name="console"),
    path("notices/", ra_views.notice_delivery, name="notice-delivery"),
    path("certificates/", ra_views.certificate_search, name="certificates"),
    path("certificates/<int:pk>/revoke/", ra_views.certificate_revoke, name="certificate-revoke"),
    path("leavers/", ra_views.leaver_list, name="leavers"),
    path("leavers/<int:pk>/revoke/", ra_views.leaver_revoke, name="leaver-revoke"),
    path("mailboxes/", mailbox_views.mailbox_list, name="mailboxes"),
    path("mailboxes/<int:pk>/", mailbox_views.mailbox_detail, name="mailbox-detail"),
    path("mailboxes/<int:pk>/active/", mailbox_views.mailbox_active, name="mailbox-active"),
    path("requests/history/", ra_views.request_history, name="request-history"),
    path("recovery/", ra_views.recovery_list, name="recovery-list"),
    path("recovery/new/", ra_views.recovery_new, name="recovery-new"),
    # Notifications link here: keep the names and the paths.
    path("recovery/<int:pk>/", ra_views.recovery_detail, name="recovery-detail"),
    path("recovery/<int:pk>/accept/", ra_views.recovery_accept, name="recovery-accept"),
    path("recovery/<int:pk>/approve/", ra_views.recovery_approve, name="recovery-approve"),
    path("recovery/<int:pk>/reject/", ra_views.recovery_reject, name="recovery-reject"),
    path("recovery/<int:pk>/withdraw/", ra_views.recovery_withdraw, name="recovery-withdraw"),
    path("recovery/<int:pk>/perform/", ra_views.recovery_perform, name="recovery-perform"),
    path("recovery/<int:pk>/archive/", ra_views.recovery_archive, name="recovery-archive"),
    path(
        "recovery/<int:pk>/perform/offline/",
        ra_views.recovery_perform_offline,
        name="recovery-perform-offline",
    ),
    path("recovery/<int:pk>/download/", ra_views.recovery_download, name="recovery-download"),
    path(
        "bulk-revocations/<int:pk>/resume/",
        ra_views.bulk_revoke_resume,
        name="bulk-revoke-resume",
    ),
    path("audit/", ra_views.audit_list, name="audit"),
    path("audit/export.<str:fmt>", ra_views.audit_export, name="audit-export"),
    path("agents/", ra_views.agents, name="agents"),
    path("rollouts/", rollout_views.rollout_list, name="rollouts"),
    path("rollouts/new/", rollout_views.rollout_new, name="rollout-new"),
    path("rollouts/<int:pk>/", rollout_views.rollout_detail, name="rollout-detail"),
    path("rollouts/<int:pk>/remind/", rollout_views.rollout_remind, name="rollout-remind"),
    path("rollouts/<int:pk>/cancel/", rollout_views.rollout_cancel, name="rollout-cancel"),
]
