"""Django's makemessages, knowing our other name for gettext_lazy.

A module that needs both gettext and gettext_lazy imports the lazy one as ``_lazy``
(``from django.utils.translation import gettext_lazy as _lazy``); xgettext only finds the
names it is told, so without this such a module's messages would silently be missing
from the catalogue (and shown in English).
"""

from __future__ import annotations

from django.core.management.commands import makemessages


class Command(makemessages.Command):
    xgettext_options = [*makemessages.Command.xgettext_options, "--keyword=_lazy"]
