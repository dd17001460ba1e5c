"""How often a key holder may ask for a recovery: 1 to 1000 in 24 hours, or the portal
does not start. (The settings module runs afresh: conftest's load_settings.)"""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_a_holder_may_ask_ten_times_a_day_by_default(load_settings):
    assert load_settings()["PKIPORTAL_RECOVERY_ASKS_PER_DAY"] == 10


@pytest.mark.parametrize(("given", "asks"), [("1", 1), ("1000", 1000), (" 3 ", 3)])
def test_it_takes_1_to_1000(load_settings, given, asks):
    assert (
        load_settings(PKIPORTAL_RECOVERY_ASKS_PER_DAY=given)["PKIPORTAL_RECOVERY_ASKS_PER_DAY"]
        == asks
    )


@pytest.mark.parametrize("given", ["0", "-1", "1001", "2.5", "many", "", "٣"])
def test_anything_else_stops_the_portal_saying_what_it_takes(load_settings, given):
    with pytest.raises(ImproperlyConfigured, match="must be a whole number from 1 to 1000"):
        load_settings(PKIPORTAL_RECOVERY_ASKS_PER_DAY=given)
