"""The account: the only source of what a certificate says about its holder.

A custom user model from the start, so a directory (LDAP) or single sign-on (OIDC)
backend can map its attributes straight onto these fields.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    display_name = models.CharField(
        max_length=200, blank=True, help_text="How the person is shown; default: given + surname."
    )
    organizational_unit = models.CharField(max_length=200, blank=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    def get_full_name(self) -> str:
        return self.display_name or super().get_full_name() or self.get_username()
