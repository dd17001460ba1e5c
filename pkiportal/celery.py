"""The Celery app for `celery -A pkiportal worker|beat`.

Settings come from Django's settings under the CELERY_ namespace. Only JSON crosses the
broker: tasks take ids, never pickled objects.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pkiportal.settings")

app = Celery("pkiportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
