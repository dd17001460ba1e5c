"""Forward the audit events not sent yet to the SIEM (PKIPORTAL_AUDIT_SYSLOG) now.

What beat's `audit-syslog` entry does every PKIPORTAL_AUDIT_SYSLOG_INTERVAL seconds, for
the embedded default, which has no beat (run it from cron every minute), or after a
receiver was down. --from-now starts at the current end of the trail instead;
--resend-from sends again from an earlier event, for a receiver that lost what it took.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import audit_shipping


class Command(BaseCommand):
    help = (
        "Send the audit events after the watermark to the SIEM over syslog "
        "(PKIPORTAL_AUDIT_SYSLOG), oldest first, until none are left."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from-now",
            action="store_true",
            help="Send nothing of the trail so far: move the watermark to its current end "
            "(audited as audit.forwarding_start), so that only later events are forwarded.",
        )
        parser.add_argument(
            "--resend-from",
            type=int,
            metavar="EVENT_ID",
            help="Send again every event from this id on (audited as audit.forwarding_resend): "
            "for a SIEM that lost events it had received. Events it has already come again.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not audit_shipping.enabled():
            raise CommandError("Forwarding is off: set PKIPORTAL_AUDIT_SYSLOG.")
        resend = options["resend_from"]
        if resend is not None and options["from_now"]:
            raise CommandError(
                "--resend-from and --from-now move the watermark both ways: give one."
            )
        if resend is not None:
            try:
                before = audit_shipping.resend_from(resend)
            except audit_shipping.NothingToResend as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(
                f"Watermark moved back from event {before}: every event from {resend} on is "
                "sent again."
            )
        if options["from_now"]:
            skipped, end = audit_shipping.start_from_now()
            self.stdout.write(
                f"Watermark at event {end}: {skipped} earlier events will not be forwarded."
            )
        result = audit_shipping.ship()
        if result.error:
            raise CommandError(
                f"Sent {result.sent} events, then failed; the next run starts after event "
                f"{result.last_event_id}: {result.error}"
            )
        self.stdout.write(
            f"Sent {result.sent} events to {audit_shipping.target()}; the trail is forwarded "
            f"up to event {result.last_event_id}."
        )
