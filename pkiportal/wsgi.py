"""WSGI entry point: `gunicorn pkiportal.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pkiportal.settings")

application = get_wsgi_application()
