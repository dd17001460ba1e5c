"""EST (RFC 7030) under /.well-known/est/: unlabelled (the default template) and labelled
with a template's slug. No trailing slashes: the RFC's paths have none."""

from django.urls import path

from enrollment import est

app_name = "est"

OPERATIONS = [
    ("cacerts", est.CaCertsView),
    ("simpleenroll", est.SimpleEnrollView),
    ("simplereenroll", est.SimpleReenrollView),
    ("csrattrs", est.CsrAttrsView),
]

urlpatterns = [
    *(path(name, view.as_view(), name=name) for name, view in OPERATIONS),
    *(
        path(f"<slug:label>/{name}", view.as_view(), name=f"labelled-{name}")
        for name, view in OPERATIONS
    ),
]
