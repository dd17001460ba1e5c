"""Every time of day a page shows names its zone (README: TIME_ZONE). An officer in
Berlin who reads "18:25" next to a CRL's nextUpdate or a recovery's download deadline
cannot tell whether it is their time or UTC, an hour or two apart."""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from django.conf import settings as django_settings

from enrollment import services
from enrollment.x509.keys import KeyAlgorithm

TEMPLATES = Path(django_settings.BASE_DIR) / "templates"
# A date filter whose format prints an hour (G, H, g or h).
TIME_FORMAT = re.compile(r'\|date:"([^"]*[GHgh][^"]*)"')


def test_every_time_format_in_the_templates_names_the_zone():
    unzoned = [
        f"{path.relative_to(TEMPLATES)}: {fmt}"
        for path in TEMPLATES.rglob("*.html")
        for fmt in TIME_FORMAT.findall(path.read_text())
        if "T" not in fmt and "e" not in fmt and "O" not in fmt
    ]

    assert not unzoned


@pytest.mark.django_db
def test_the_console_and_the_request_lists_label_times_with_the_zone(
    settings, hierarchy, approval, employee, officer_client
):
    settings.TIME_ZONE = "Europe/Berlin"
    berlin = ZoneInfo("Europe/Berlin")
    requested = services.request_submit(
        requester=employee,
        template=approval("smime-dual-use"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    crl = hierarchy.issuing.revocation_lists.first()

    console = officer_client.get("/ra/").content.decode()
    requests = officer_client.get("/ra/requests/").content.decode()

    this_update = crl.this_update.astimezone(berlin)
    assert f"{this_update:%Y-%m-%d %H:%M} {this_update.tzname()}" in console
    created = requested.created_at.astimezone(berlin)
    assert f"{created:%Y-%m-%d %H:%M} {created.tzname()}" in requests
