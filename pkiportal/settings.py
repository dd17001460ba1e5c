"""The one settings module: everything comes from the environment (12-factor).

Defaults give the embedded setup a person trying pkiportal expects: SQLite under var/,
tasks run inline (no broker), mail to the console. Production sets DATABASE_URL,
CELERY_BROKER_URL, SECRET_KEY and the CA key passphrase. Every variable is documented in
README.md. Secrets can come from `<NAME>_FILE` instead of `<NAME>`.
"""

import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import django_stubs_ext
from celery.schedules import crontab
from csp.constants import NONE, SELF

import environ
from django.core.exceptions import ImproperlyConfigured

# Pure Python over cryptography (no Django): the subject rules the CA applies at issuance.
from enrollment.x509.builder import check_country, check_organization_identifier
from enrollment.x509.errors import PolicyError
from enrollment.x509.mail_domains import parse_mail_domains
from pkiportal.attestation import parse_aaguids, read_roots
from pkiportal.clients import trusted_proxies
from pkiportal.origins import https_origin
from pkiportal.secret_files import create_private_file_once

# Django's generic classes take the type parameters django-stubs gives them at run time
# too (admin.ModelAdmin[User], forms.ModelForm[Template]); it changes nothing else.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
VAR_DIR = Path(env.str("PKIPORTAL_VAR_DIR", default=str(BASE_DIR / "var")))


def _secret(name: str, default: str | None = None) -> str | None:
    """Read NAME, or the contents of the file named by NAME_FILE (Docker/systemd secrets)."""
    path = env.str(f"{name}_FILE", default="")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    value: str | None = env.str(name, default=default)  # django-environ is untyped
    return value


def _embedded_secret_key() -> str:
    """A per-installation key kept under var/ so the embedded default needs no set-up.

    Created 0600 and only if missing (pkiportal/secret_files.py): processes that start
    together (gunicorn workers, runserver and a Celery worker) all sign with the one key
    the first of them wrote, never each with its own.
    """
    path = VAR_DIR / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return create_private_file_once(path, lambda: secrets.token_urlsafe(50))
    except OSError as exc:
        raise ImproperlyConfigured(
            f"The embedded SECRET_KEY in {path} cannot be read ({exc}); delete the file if "
            "it is empty, or set SECRET_KEY."
        ) from exc


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _secret("SECRET_KEY") or _embedded_secret_key()
# Earlier keys, still accepted while signed values (sessions) and second-factor seeds sealed
# under a key derived from them are replaced (README.md, "Second factor").
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from here, not from a CDN
    "csp",
    "axes",
    "django_otp",
    "accounts",
    "enrollment",
    "directory",
]

MIDDLEWARE = [
    "pkiportal.middleware.header_nul_to_space",
    # Outside the view's transaction (ATOMIC_REQUESTS): refused attempts' audit events.
    "pkiportal.middleware.audit_apart",
    "django.middleware.security.SecurityMiddleware",
    "pkiportal.csp.PortalCSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The page's language: the account's choice, else this browser's (cookie), else
    # Accept-Language. Before the second-factor redirect, so that page is worded too.
    "pkiportal.i18n.LocaleMiddleware",
    # request.user.is_verified(): whether this session confirmed a second factor.
    "django_otp.middleware.OTPMiddleware",
    # Until it has, a session that needs one reaches only the second-factor pages.
    "accounts.middleware.SecondFactorMiddleware",
    "pkiportal.middleware.MessageMiddleware",  # Django's, its storage made on first use
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Before any view or process_view reads the body (CsrfViewMiddleware's reads uploads).
    "pkiportal.middleware.body_size_cap",
    # Last, as django-axes asks: it turns a locked-out login into a clear 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "pkiportal.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "pkiportal.context_processors.portal",
            ],
        },
    },
]

WSGI_APPLICATION = "pkiportal.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'pkiportal.sqlite3'}"),
}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the inline tasks and web requests of the embedded default read while writing.
    # IMMEDIATE takes the write lock when a transaction starts, so writers queue (up to the
    # timeout) instead of failing with "database is locked" when a read turns into a write,
    # and the per-person limits are counted by one enrolment at a time.
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options.setdefault("init_command", "PRAGMA journal_mode=WAL;")
    options.setdefault("transaction_mode", "IMMEDIATE")
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env.bool(
    "DATABASE_PREPARED_STATEMENTS", default=True
):
    # Server-side binding lets psycopg prepare a statement run a few times on a connection,
    # so PostgreSQL stops parsing and planning the same queries on every request (a third
    # of its CPU per enrolment). Turn off behind PgBouncer in transaction mode before
    # 1.21, which cannot keep prepared statements across transactions.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"server_side_binding": True, "prepare_threshold": 5}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # django-axes first: it refuses a locked-out user before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    *env.list("AUTHENTICATION_BACKENDS", default=["django.contrib.auth.backends.ModelBackend"]),
]
# Brute-force protection: lock a user name + address pair after this many failures.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=1.0)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The real client behind a trusted proxy, and "Alice"/" alice" counted as "alice" (a
# directory matches them all): pkiportal/clients.py, shared with the audit trail.
AXES_CLIENT_IP_CALLABLE = "pkiportal.clients.client_address"
AXES_USERNAME_CALLABLE = "pkiportal.clients.axes_username"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
# None: LogoutView shows registration/logged_out.html, so people see that it worked.
LOGOUT_REDIRECT_URL = None

# The portal's languages. Pages follow the browser (Accept-Language) or the language the
# person chose; e-mail follows the recipient's choice; PKIPORTAL_LANGUAGE is the default
# for everyone else (and for mail to people who never chose). Audit events, logs and
# management commands stay in English, so a trail reads the same whoever acted.
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
LANGUAGE_CODE = env.str("PKIPORTAL_LANGUAGE", default="en")
if LANGUAGE_CODE not in dict(LANGUAGES):
    raise ImproperlyConfigured(
        f"PKIPORTAL_LANGUAGE must be one of {', '.join(dict(LANGUAGES))}, not {LANGUAGE_CODE!r}."
    )
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing root
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve from the source folders too, so a checkout works before collectstatic (tests, a try).
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)

# Variables and POST fields marked sensitive stay out of the DEBUG page too (pkiportal/errors.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "pkiportal.errors.SecretsHiddenReporterFilter"

# Security headers; the TLS-only ones are switched on by the operator behind HTTPS.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
# Sessions in the database, each with the account it is signed in as (an indexed column):
# ending a person's sessions (deactivation, a second-factor reset) is one DELETE, not a
# pass over every session (accounts/sessions.py). Django's db and cached_db engines work
# too, by that pass; the cache, file and cookie engines cannot end a person's sessions and
# are refused. django.contrib.sessions stays installed: its table is what accounts/0008
# copies from, and what Django's engines use.
SESSION_ENGINE = "accounts.session_store"
# Officers approve, revoke and recover keys in a session: a working day, not Django's two
# weeks, and none left behind in a closed browser on a shared machine.
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = env.bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", default=True)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# Never the repository: certificates carry http:// CRL and CA URLs for life, and many CRL
# fetchers do not follow a redirect (fetching a CRL over TLS may need that CRL itself).
# Nor /health/, which load balancers ask over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^pki/", r"^health/(live/)?$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Content-Security-Policy (django-csp): our pages load scripts, styles and images from
# this origin only and use no inline script or style, so none is allowed (pkiportal/csp.py
# has the one exception). Set CSP_REPORT_URI to collect violations from browsers.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],  # Swagger UI's icons are data: URIs
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
if env.str("CSP_REPORT_URI", default=""):
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["report-uri"] = [env.str("CSP_REPORT_URI")]
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Reverse proxies (addresses or networks) whose X-Forwarded-For names the client, for
# lock-outs and audit events. Empty: trust nobody, REMOTE_ADDR is the client.
try:
    PKIPORTAL_TRUSTED_PROXIES = trusted_proxies(env.list("PKIPORTAL_TRUSTED_PROXIES", default=[]))
except ValueError as exc:
    raise ImproperlyConfigured(f"PKIPORTAL_TRUSTED_PROXIES: {exc}") from exc
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=256 * 1024)

# Mail: console by default; EMAIL_URL=smtp+tls://user:pass@host:587 in production.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="pkiportal@localhost")
# A mail server that accepts the connection and never answers must not hold a request (a
# revocation's mail is sent after its commit) or a worker for ever: Django waits forever.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

# Celery: no broker configured means every task runs inline, in the request that queued it.
CELERY_TASK_ALWAYS_EAGER = not env.str("CELERY_BROKER_URL", default="")
# In-process transport when unset, so nothing ever falls back to Celery's amqp://localhost.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "memory://"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task whose worker dies mid-run is given back, never lost; pkiportal.celery.PortalTask
# drops a message that keeps killing its worker. Not Celery's task_retry_on_worker_lost: it
# bounds only a pool process's death, not a whole worker's (the message then comes back
# after the visibility timeout), and it spends the tasks' retry budget.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A dead broker must not hold a revocation request for long: fail fast, the watchdog catches
# up. socket_timeout covers one that accepts and then never answers (frozen, partitioned).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# No task holds a worker for ever, so CRL tasks never queue behind a stuck one (a CRL of a
# million entries takes seconds). Below visibility_timeout, or Redis would hand the task to
# a second worker while the first still runs it.
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=300)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=360)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2}
CELERY_TIMEZONE = TIME_ZONE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # knox stores only a hash of each API token, never the token itself.
        "enrollment.api.authentication.TokenAuthentication",
        # A browser session, once it has confirmed its second factor where one is needed.
        "accounts.api.VerifiedSessionAuthentication",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "pkiportal.api.BrowsableAPIRenderer",  # without its inline <style> (CSP)
    ],
    "DEFAULT_PARSER_CLASSES": [
        "pkiportal.api.JSONParser",  # DRF's, with JSON nested too deep a 400, not a 500
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "pkiportal.pagination.LimitOffsetPagination",  # bounded
    "PAGE_SIZE": 50,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "pkiportal.api.exception_handler",
    # DRF's, remembering its choice for each Accept header.
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "pkiportal.negotiation.ContentNegotiation",
}
API_TOKEN_TTL_DAYS = env.int("API_TOKEN_TTL_DAYS", default=90)
if API_TOKEN_TTL_DAYS < 1:
    raise ImproperlyConfigured("API_TOKEN_TTL_DAYS must be at least 1.")
# The longest a token lives; a person may choose a shorter life (/account/tokens/).
REST_KNOX = {"TOKEN_TTL": timedelta(days=API_TOKEN_TTL_DAYS)}
# knox's own default, named so enrollment.ApiToken can point at the (swappable) model.
KNOX_TOKEN_MODEL = "knox.AuthToken"
# Live API tokens one person may hold (web page and API alike).
PKIPORTAL_MAX_API_TOKENS = env.int("PKIPORTAL_MAX_API_TOKENS", default=10)
if PKIPORTAL_MAX_API_TOKENS < 1:
    raise ImproperlyConfigured("PKIPORTAL_MAX_API_TOKENS must be at least 1.")
# Minting an API token from a browser session needs a sign-in this recent: a token outlives
# the session, so a stolen session cookie must not be enough (enrollment/recent_sign_in.py).
PKIPORTAL_TOKEN_SIGN_IN_MINUTES = env.int("PKIPORTAL_TOKEN_SIGN_IN_MINUTES", default=15)
if not 1 <= PKIPORTAL_TOKEN_SIGN_IN_MINUTES <= 1440:
    raise ImproperlyConfigured("PKIPORTAL_TOKEN_SIGN_IN_MINUTES must be 1 to 1440 (a day).")
SPECTACULAR_SETTINGS = {
    "TITLE": "pkiportal API",
    "DESCRIPTION": (
        "Self-service S/MIME PKI: enrolment, certificates, directory.\n\n"
        "Scripts authenticate with an API token: `Authorization: Token <token>`. Create one "
        "on the portal page [/account/tokens/](/account/tokens/) (it works with single "
        "sign-on), or with `POST /api/v1/auth/token/` and your portal password."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from drf-spectacular-sidecar's static files: the docs page works without
    # the internet (an intranet portal) and under our Content-Security-Policy.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One name per choice set, whichever API (enrolment, directory) shows it.
    "ENUM_NAME_OVERRIDES": {
        "RevocationReasonEnum": "enrollment.models.Certificate.RevocationReasonChoice",
        "RequestStateEnum": "enrollment.models.CertificateRequest.State",
        "RolloutStateEnum": "enrollment.models.Rollout.State",
        "CertificateStateEnum": ["valid", "revoked", "expired"],
    },
}

# --- PKI -----------------------------------------------------------------------------
# The public base URL embedded in issued certificates (CDP, AIA). Must be plain http:
# relying parties fetch CRLs and CA certificates without TLS (RFC 5280 4.2.1.13).
PKIPORTAL_BASE_URL = env.str("PKIPORTAL_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
if not PKIPORTAL_BASE_URL.startswith("http://"):
    raise ImproperlyConfigured("PKIPORTAL_BASE_URL must be an http:// URL (CRLs and AIA).")
# The portal's own address for people: every link in its mail (sign-in, key download, key
# recovery) starts with it. https:// in production (check --deploy warns, W014); empty, it
# is PKIPORTAL_BASE_URL, so the embedded default links to where it runs.
PKIPORTAL_SITE_URL = env.str("PKIPORTAL_SITE_URL", default="").strip().rstrip("/")
if PKIPORTAL_SITE_URL:
    _site = urlsplit(PKIPORTAL_SITE_URL)
    try:
        _site_port_ok = _site.port is None or _site.port > 0
    except ValueError:
        _site_port_ok = False
    # Links are this followed by the page's path: a path here would be doubled.
    if (
        _site.scheme not in ("https", "http")
        or not _site.hostname
        or not _site_port_ok
        or _site.path
        or _site.query
        or _site.fragment
    ):
        raise ImproperlyConfigured(
            "PKIPORTAL_SITE_URL must be https://host[:port], without a path; it is "
            f"{PKIPORTAL_SITE_URL!r}."
        )
else:
    PKIPORTAL_SITE_URL = PKIPORTAL_BASE_URL
PKIPORTAL_ORGANIZATION_NAME = env.str("PKIPORTAL_ORGANIZATION_NAME", default="Example Org")
PKIPORTAL_COUNTRY_NAME = env.str("PKIPORTAL_COUNTRY_NAME", default="")
# Sponsor-validated certificates name the organisation's registration (S/MIME BR 7.1.4.2.2 d),
# e.g. "NTRGB-12345678" or "LEIXG-<LEI>". The default is a placeholder for trying it out.
PKIPORTAL_ORGANIZATION_IDENTIFIER = env.str(
    "PKIPORTAL_ORGANIZATION_IDENTIFIER", default="NTRUS-0000000"
)
# Refused at start-up rather than at every issuance: each certificate carries both.
try:
    if PKIPORTAL_COUNTRY_NAME:
        PKIPORTAL_COUNTRY_NAME = check_country(PKIPORTAL_COUNTRY_NAME)
except PolicyError as exc:
    raise ImproperlyConfigured(f"PKIPORTAL_COUNTRY_NAME: {exc.message}") from exc
try:
    check_organization_identifier(PKIPORTAL_ORGANIZATION_IDENTIFIER, PKIPORTAL_COUNTRY_NAME)
except PolicyError as exc:
    with_country = (
        f" (PKIPORTAL_COUNTRY_NAME is {PKIPORTAL_COUNTRY_NAME})" if PKIPORTAL_COUNTRY_NAME else ""
    )
    raise ImproperlyConfigured(
        f"PKIPORTAL_ORGANIZATION_IDENTIFIER: {exc.message}{with_country}"
    ) from exc
# The mail domains the organisation controls (S/MIME BR 3.2.2.1): certificates are issued
# only for account addresses within them, and new issuing CAs are name-constrained to them.
# "example.com" is that host, ".example.com" any host below it (RFC 5280 4.2.1.10).
# Empty: any address (check --deploy warns).
try:
    PKIPORTAL_MAIL_DOMAINS = parse_mail_domains(env.list("PKIPORTAL_MAIL_DOMAINS", default=[]))
except PolicyError as exc:
    raise ImproperlyConfigured(f"PKIPORTAL_MAIL_DOMAINS: {exc.message}") from exc
# Online CA keys: encrypted PKCS#8 files in this directory, never in the database.
# "pkcs11": new online CA keys are generated in (or taken from) an HSM token instead. The
# setting picks the backend of new CAs; each CA row records its own (README: "Keeping the
# issuing CA key in an HSM").
PKIPORTAL_KEY_BACKEND = env.str("PKIPORTAL_KEY_BACKEND", default="file")
if PKIPORTAL_KEY_BACKEND not in ("file", "pkcs11"):
    raise ImproperlyConfigured(
        f"PKIPORTAL_KEY_BACKEND must be file or pkcs11, not {PKIPORTAL_KEY_BACKEND!r}."
    )
# The HSM vendor's PKCS#11 library, the token (by label, or serial where labels repeat) and
# the user PIN: best from a file (PKIPORTAL_PKCS11_PIN_FILE), never in the database.
PKIPORTAL_PKCS11_MODULE = env.str("PKIPORTAL_PKCS11_MODULE", default="")
PKIPORTAL_PKCS11_TOKEN_LABEL = env.str("PKIPORTAL_PKCS11_TOKEN_LABEL", default="")
PKIPORTAL_PKCS11_TOKEN_SERIAL = env.str("PKIPORTAL_PKCS11_TOKEN_SERIAL", default="")
PKIPORTAL_PKCS11_PIN = _secret("PKIPORTAL_PKCS11_PIN", default="") or ""
# Set at all, the variable is in every child's environment, whether or not _FILE wins.
PKIPORTAL_PKCS11_PIN_IN_ENVIRONMENT = bool(env.str("PKIPORTAL_PKCS11_PIN", default=""))
if PKIPORTAL_KEY_BACKEND == "pkcs11" and not (
    PKIPORTAL_PKCS11_MODULE
    and (PKIPORTAL_PKCS11_TOKEN_LABEL or PKIPORTAL_PKCS11_TOKEN_SERIAL)
    and PKIPORTAL_PKCS11_PIN
):
    raise ImproperlyConfigured(
        "PKIPORTAL_KEY_BACKEND=pkcs11 needs PKIPORTAL_PKCS11_MODULE, "
        "PKIPORTAL_PKCS11_TOKEN_LABEL (or _SERIAL) and PKIPORTAL_PKCS11_PIN_FILE."
    )
PKIPORTAL_KEY_DIR = Path(env.str("PKIPORTAL_KEY_DIR", default=str(VAR_DIR / "keys")))
PKIPORTAL_CA_KEY_PASSPHRASE = _secret("PKIPORTAL_CA_KEY_PASSPHRASE", default="") or ""
# Where it was read from (empty: not a file), and whether the variable itself is set: then
# it is in every child's environment, whether or not _FILE wins. check --deploy warns of a
# passphrase that protects nothing: in the environment, beside the keys or readable by
# others (pkiportal.W010).
PKIPORTAL_CA_KEY_PASSPHRASE_FILE = env.str("PKIPORTAL_CA_KEY_PASSPHRASE_FILE", default="")
PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT = bool(
    env.str("PKIPORTAL_CA_KEY_PASSPHRASE", default="")
)
# Embedded default only: with no passphrase configured, `create_pki --embedded-passphrase`
# writes a random one here and the keystore reads it at signing time. Production sets the
# variable (or _FILE) instead, so the passphrase never sits beside the keys.
PKIPORTAL_EMBEDDED_PASSPHRASE_FILE = PKIPORTAL_KEY_DIR / "passphrase"
# Roles are Django groups, so a directory's group sync (LDAP/OIDC claims) can grant them.
PKIPORTAL_RA_OFFICER_GROUP = env.str("PKIPORTAL_RA_OFFICER_GROUP", default="RA officers")
PKIPORTAL_KRA_GROUP = env.str("PKIPORTAL_KRA_GROUP", default="Key recovery agents")

# --- second factor (README.md, "Second factor") -----------------------------------------
# Who must confirm a TOTP code (or a backup code) after the password: "officers" (RA
# officers, key recovery agents, staff and superusers), "everyone" or "nobody". Anyone may
# set one up; whoever has one is asked for it at every sign-in.
PKIPORTAL_MFA_REQUIRED_FOR = env.str("PKIPORTAL_MFA_REQUIRED_FOR", default="officers").strip()
if PKIPORTAL_MFA_REQUIRED_FOR not in ("officers", "everyone", "nobody"):
    raise ImproperlyConfigured(
        'PKIPORTAL_MFA_REQUIRED_FOR must be "officers", "everyone" or "nobody"; it is '
        f"{PKIPORTAL_MFA_REQUIRED_FOR!r}."
    )
# Keys that seal TOTP seeds in the database (comma-separated: the first seals, all open).
# Empty: a key derived from SECRET_KEY (and SECRET_KEY_FALLBACKS), so a database reader
# alone never holds a usable seed; check --deploy warns (pkiportal.W006).
PKIPORTAL_MFA_KEYS = [
    key.strip()
    for key in (_secret("PKIPORTAL_MFA_KEY", default="") or "").split(",")
    if key.strip()
]
if any(len(key) < 32 for key in PKIPORTAL_MFA_KEYS):
    raise ImproperlyConfigured(
        "PKIPORTAL_MFA_KEY: each key must be at least 32 characters (openssl rand -base64 32)."
    )
# Single sign-on sign-ins that count as having confirmed a second factor: "amr" (when the
# ID token's amr claim names one, RFC 8176), "always" (the provider enforces it for all)
# or "never" (the portal asks for its own as well).
PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON = env.str(
    "PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON", default="amr"
).strip()
if PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON not in ("amr", "always", "never"):
    raise ImproperlyConfigured(
        'PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON must be "amr", "always" or "never"; it is '
        f"{PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON!r}."
    )
# Security keys and passkeys (WebAuthn) as a second factor: the relying party id is the
# host of PKIPORTAL_SITE_URL ("localhost" for a loopback address: browsers refuse an IP
# address), the origin where people sign in is https:// on the site URL's host and port
# (on a loopback host https://localhost and http://localhost[:port], for trying the
# portal). Set them where people sign in at yet another name; check --deploy warns when
# they do not fit together or the site URL's https origin is missing (W008).
_SITE_HOST = (urlsplit(PKIPORTAL_SITE_URL).hostname or "localhost").lower()
_SITE_PORT = urlsplit(PKIPORTAL_SITE_URL).port
# Where people sign in: https:// on the site URL's host, its port kept when it is not 80
# (the site URL is PKIPORTAL_BASE_URL, http:// for CRLs and AIA, when it is not set;
# browsers use WebAuthn over https only).
_SITE_ORIGIN = https_origin(PKIPORTAL_SITE_URL, default_host="localhost")
_LOOPBACK_SITE = _SITE_HOST in ("localhost", "127.0.0.1", "::1")
PKIPORTAL_WEBAUTHN_RP_ID = env.str("PKIPORTAL_WEBAUTHN_RP_ID", default="").strip().lower() or (
    "localhost" if _LOOPBACK_SITE else _SITE_HOST
)
PKIPORTAL_WEBAUTHN_ORIGINS = [
    origin.strip().rstrip("/")
    for origin in env.list("PKIPORTAL_WEBAUTHN_ORIGINS", default=[])
    if origin.strip()
] or (
    [
        f"https://{PKIPORTAL_WEBAUTHN_RP_ID}",
        "http://localhost" + (f":{_SITE_PORT}" if _SITE_PORT else ""),
    ]
    if _LOOPBACK_SITE
    else [_SITE_ORIGIN]
)
for _origin in PKIPORTAL_WEBAUTHN_ORIGINS:
    if not _origin.startswith(("https://", "http://")) or urlsplit(_origin).path:
        raise ImproperlyConfigured(
            f"PKIPORTAL_WEBAUTHN_ORIGINS: {_origin!r} is not an origin (https://host[:port])."
        )
# Attestation: which security keys count for whom. A PEM file of CA certificates (the key
# vendor's attestation root, e.g. Yubico's) that a key's attestation must chain to; with it,
# keys added by PKIPORTAL_WEBAUTHN_ATTESTATION_FOR ("roles": RA officers, key recovery
# agents, staff and superusers, the default; or "everyone") must prove their model, and,
# with PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS, be one of those models. Read once, at start-up;
# the setting holds the certificates (one PEM each). Empty: no attestation is asked for.
_ATTESTATION_ROOTS_FILE = env.str("PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS", default="").strip()
try:
    PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = (
        read_roots(_ATTESTATION_ROOTS_FILE) if _ATTESTATION_ROOTS_FILE else []
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS: {exc}") from exc
try:
    PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS = parse_aaguids(
        env.list("PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS", default=[])
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS: {exc}") from exc
_attestation_for = env.str("PKIPORTAL_WEBAUTHN_ATTESTATION_FOR", default="").strip()
if _attestation_for not in ("", "roles", "everyone"):
    raise ImproperlyConfigured(
        'PKIPORTAL_WEBAUTHN_ATTESTATION_FOR must be "roles" or "everyone"; it is '
        f"{_attestation_for!r}."
    )
for _needs_roots, _given in (
    ("PKIPORTAL_WEBAUTHN_ATTESTATION_FOR", _attestation_for),
    ("PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS", PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS),
):
    if _given and not PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS:
        # A key's AAGUID is only the key's word unless its attestation is verified.
        raise ImproperlyConfigured(
            f"{_needs_roots} needs PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS (the PEM file of the "
            "key vendors' attestation roots): without it no key's model can be verified."
        )
# "" while no roots are given: nobody's keys are asked for attestation.
PKIPORTAL_WEBAUTHN_ATTESTATION_FOR = (
    (_attestation_for or "roles") if PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS else ""
)
# FIDO metadata (manage.py import_fido_metadata): the PEM file of the FIDO Metadata Service's
# root CA (GlobalSign Root R46 for the real service) that a BLOB's chain must lead to.
# Read by the command, not at start-up: the portal runs without it.
PKIPORTAL_FIDO_MDS_ROOT = env.str("PKIPORTAL_FIDO_MDS_ROOT", default="").strip()
# Security keys only: for whom ("roles", as above, or "everyone") only a session confirmed
# with a security key (an approved one, where the attestation policy covers them too) opens
# the portal; one confirmed with the app, a backup code or a single sign-on opens only
# /account/, to add a key. Empty (the default): off. Check --deploy warns when it covers
# people and security keys cannot work at this portal's address (W018).
PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR = env.str(
    "PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR", default=""
).strip()
if PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR not in ("", "roles", "everyone"):
    raise ImproperlyConfigured(
        'PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR must be empty, "roles" or "everyone"; it is '
        f"{PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR!r}."
    )
# Limits that protect the CA from a runaway script or a stolen session.
PKIPORTAL_MAX_VALID_PER_TEMPLATE = env.int("PKIPORTAL_MAX_VALID_PER_TEMPLATE", default=3)
PKIPORTAL_ENROLL_RATE_PER_HOUR = env.int("PKIPORTAL_ENROLL_RATE_PER_HOUR", default=20)
PKIPORTAL_PKCS12_PASSWORD_MIN_LENGTH = env.int("PKIPORTAL_PKCS12_PASSWORD_MIN_LENGTH", default=12)
# Keep each online CA key decrypted in the signing process's memory after first use:
# decrypting per signature costs ~75 ms (RSA key validation). Never in a shared cache.
PKIPORTAL_CA_KEY_PROCESS_CACHE = env.bool("PKIPORTAL_CA_KEY_PROCESS_CACHE", default=True)
# CRLs. S/MIME BR 4.9.7: a subscriber CRL is reissued at least every 7 days with nextUpdate
# at most 10 days after thisUpdate; a CRL of CA certificates (the root's) at most 12 months.
PKIPORTAL_CRL_VALIDITY_DAYS = env.int("PKIPORTAL_CRL_VALIDITY_DAYS", default=7)
PKIPORTAL_CRL_REFRESH_HOURS = env.int("PKIPORTAL_CRL_REFRESH_HOURS", default=24)
if not 1 <= PKIPORTAL_CRL_VALIDITY_DAYS <= 10:
    raise ImproperlyConfigured(
        "PKIPORTAL_CRL_VALIDITY_DAYS must be 1 to 10 (S/MIME BR 4.9.7: nextUpdate at most "
        "10 days after thisUpdate)."
    )
if not 1 <= PKIPORTAL_CRL_REFRESH_HOURS <= min(7 * 24, PKIPORTAL_CRL_VALIDITY_DAYS * 24 - 1):
    raise ImproperlyConfigured(
        "PKIPORTAL_CRL_REFRESH_HOURS must be 1 to 168 (S/MIME BR 4.9.7: reissued at least "
        "every 7 days) and shorter than PKIPORTAL_CRL_VALIDITY_DAYS."
    )
# The last part of a CRL's life in which a newer one should long be out: the watchdog
# replaces (and reports) any CRL that enters it. Default: half the slack between the two.
_CRL_SLACK_HOURS = PKIPORTAL_CRL_VALIDITY_DAYS * 24 - PKIPORTAL_CRL_REFRESH_HOURS
PKIPORTAL_CRL_OVERLAP_HOURS = env.int(
    "PKIPORTAL_CRL_OVERLAP_HOURS", default=max(1, _CRL_SLACK_HOURS // 2)
)
if not 1 <= PKIPORTAL_CRL_OVERLAP_HOURS <= _CRL_SLACK_HOURS:
    raise ImproperlyConfigured(
        f"PKIPORTAL_CRL_OVERLAP_HOURS must be 1 to {_CRL_SLACK_HOURS} (the CRL validity "
        "minus the refresh interval), or the watchdog would race the scheduled refresh."
    )
# Revocations within this many seconds share one CRL (a burst gives a few, not hundreds).
PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS = env.float("PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS", default=2.0)
if not 0 <= PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS <= 60:
    raise ImproperlyConfigured("PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS must be 0 to 60.")
# How often the watchdog looks for stale CRLs and revocations whose queued CRL got lost.
PKIPORTAL_CRL_WATCHDOG_MINUTES = env.int("PKIPORTAL_CRL_WATCHDOG_MINUTES", default=5)
if not 1 <= PKIPORTAL_CRL_WATCHDOG_MINUTES <= 60:
    raise ImproperlyConfigured("PKIPORTAL_CRL_WATCHDOG_MINUTES must be 1 to 60.")
PKIPORTAL_ROOT_CRL_VALIDITY_DAYS = env.int("PKIPORTAL_ROOT_CRL_VALIDITY_DAYS", default=365)
if not 1 <= PKIPORTAL_ROOT_CRL_VALIDITY_DAYS <= 365:
    raise ImproperlyConfigured(
        "PKIPORTAL_ROOT_CRL_VALIDITY_DAYS must be 1 to 365 (S/MIME BR 4.9.7: 12 months)."
    )
# /health/ and the RA console warn this long before the offline root's CRL expires.
PKIPORTAL_ROOT_CRL_WARNING_DAYS = env.int("PKIPORTAL_ROOT_CRL_WARNING_DAYS", default=30)
# An issuing CA's end (README: Replacing the issuing CA). /health/ and the RA console warn
# this long before an issuing CA that templates use expires, and whenever its end already
# cuts certificates short of their template's validity.
PKIPORTAL_CA_EXPIRY_WARNING_DAYS = env.int("PKIPORTAL_CA_EXPIRY_WARNING_DAYS", default=180)
if not 1 <= PKIPORTAL_CA_EXPIRY_WARNING_DAYS <= 3650:
    raise ImproperlyConfigured("PKIPORTAL_CA_EXPIRY_WARNING_DAYS must be 1 to 3650.")
# A certificate its CA's end would cut to fewer days than this is refused, not issued (a
# template that asks for fewer days is not affected); 0 issues until the CA's last second.
PKIPORTAL_MIN_CERTIFICATE_DAYS = env.int("PKIPORTAL_MIN_CERTIFICATE_DAYS", default=30)
if not 0 <= PKIPORTAL_MIN_CERTIFICATE_DAYS <= 825:
    raise ImproperlyConfigured(
        "PKIPORTAL_MIN_CERTIFICATE_DAYS must be 0 to 825 (the longest S/MIME validity)."
    )
# OCSP (README "OCSP"). A client may keep a "good" answer until its nextUpdate, so this is
# how long one can go on trusting a certificate revoked since; S/MIME BR 4.9.10: 8 h to 10 d.
PKIPORTAL_OCSP_VALIDITY_HOURS = env.int("PKIPORTAL_OCSP_VALIDITY_HOURS", default=24)
if not 8 <= PKIPORTAL_OCSP_VALIDITY_HOURS <= 240:
    raise ImproperlyConfigured(
        "PKIPORTAL_OCSP_VALIDITY_HOURS must be 8 to 240 (S/MIME BR 4.9.10: an OCSP response "
        "is valid for at least eight hours and at most ten days)."
    )
# How long a shared HTTP cache (a proxy, a CDN) may keep a GET answer: a revocation reaches
# the clients behind it at most this late. 0: every request comes to the portal.
PKIPORTAL_OCSP_MAX_AGE_SECONDS = env.int("PKIPORTAL_OCSP_MAX_AGE_SECONDS", default=300)
if not 0 <= PKIPORTAL_OCSP_MAX_AGE_SECONDS <= 3600:
    raise ImproperlyConfigured(
        "PKIPORTAL_OCSP_MAX_AGE_SECONDS must be 0 to 3600 (an hour, as for CRLs)."
    )
# EST, RFC 7030 (README "EST (RFC 7030)"): enrolment by devices, MDM tools and scripts under
# /.well-known/est/. Off by default: it takes passwords by HTTP basic, which only belongs
# behind HTTPS (check --deploy warns, pkiportal.W007 and W009). The default template is the
# one the unlabelled /.well-known/est/ enrols from (a template's slug; empty: only labelled
# URLs).
PKIPORTAL_EST_ENABLED = env.bool("PKIPORTAL_EST_ENABLED", default=False)
PKIPORTAL_EST_DEFAULT_TEMPLATE = env.str("PKIPORTAL_EST_DEFAULT_TEMPLATE", default="").strip()
# EST refuses every signed-in call that did not come over HTTPS (request.is_secure(): behind
# a proxy, USE_X_FORWARDED_PROTO), unless DEBUG or this is on: for a test lab only.
PKIPORTAL_EST_ALLOW_HTTP = env.bool("PKIPORTAL_EST_ALLOW_HTTP", default=False)
# A monitoring system that cannot sign in sends `Authorization: Bearer <token>` to /health/
# for every check's details; empty: only staff and RA officers see them.
PKIPORTAL_HEALTH_TOKEN = _secret("PKIPORTAL_HEALTH_TOKEN", default="") or ""
if PKIPORTAL_HEALTH_TOKEN and (
    len(PKIPORTAL_HEALTH_TOKEN) < 32 or not PKIPORTAL_HEALTH_TOKEN.isascii()
):
    raise ImproperlyConfigured(
        "PKIPORTAL_HEALTH_TOKEN must be at least 32 ASCII characters, e.g. from "
        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
    )
# The token is refused over plain HTTP (request.is_secure(): behind a proxy that ends TLS,
# USE_X_FORWARDED_PROTO), like EST's credentials: anyone on the path could read and replay
# it. true takes it over plain HTTP too, for a scraper that cannot use HTTPS (check
# --deploy warns, pkiportal.W011).
PKIPORTAL_MONITORING_ALLOW_HTTP = env.bool("PKIPORTAL_MONITORING_ALLOW_HTTP", default=False)
# `celery -A pkiportal beat`: every online CA's CRL on schedule, and the watchdog. Runs that
# could not start in time expire rather than pile up behind a dead worker.
CELERY_BEAT_SCHEDULE = {
    "crl-refresh": {
        "task": "enrollment.tasks.crl_publish_scheduled_task",
        "schedule": timedelta(hours=PKIPORTAL_CRL_REFRESH_HOURS),
        "options": {"expires": PKIPORTAL_CRL_REFRESH_HOURS * 3600},
    },
    "crl-watchdog": {
        "task": "enrollment.tasks.crl_watchdog_task",
        "schedule": timedelta(minutes=PKIPORTAL_CRL_WATCHDOG_MINUTES),
        "options": {"expires": PKIPORTAL_CRL_WATCHDOG_MINUTES * 60},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Key recovery (README.md, "Key recovery"): how many officers besides the requester approve,
# and how long the recovered PKCS#12 waits, encrypted, for its one download.
PKIPORTAL_RECOVERY_APPROVALS = env.int("PKIPORTAL_RECOVERY_APPROVALS", default=1)
if PKIPORTAL_RECOVERY_APPROVALS < 1:
    raise ImproperlyConfigured(
        "PKIPORTAL_RECOVERY_APPROVALS must be at least 1: recovery is under dual control."
    )
PKIPORTAL_RECOVERY_DOWNLOAD_MINUTES = env.int("PKIPORTAL_RECOVERY_DOWNLOAD_MINUTES", default=60)
if not 5 <= PKIPORTAL_RECOVERY_DOWNLOAD_MINUTES <= 7 * 24 * 60:
    raise ImproperlyConfigured("PKIPORTAL_RECOVERY_DOWNLOAD_MINUTES must be 5 to 10080 (a week).")
# Recoveries a key holder may ask for in 24 hours: each one mails every RA officer.
_RECOVERY_ASKS = env.str("PKIPORTAL_RECOVERY_ASKS_PER_DAY", default="10").strip()
if not (_RECOVERY_ASKS.isascii() and _RECOVERY_ASKS.isdigit() and 1 <= int(_RECOVERY_ASKS) <= 1000):
    raise ImproperlyConfigured(
        f"PKIPORTAL_RECOVERY_ASKS_PER_DAY must be a whole number from 1 to 1000; it is "
        f"{_RECOVERY_ASKS!r}."
    )
PKIPORTAL_RECOVERY_ASKS_PER_DAY = int(_RECOVERY_ASKS)
# Owners are mailed this many days before a certificate expires, once per threshold.
PKIPORTAL_EXPIRY_NOTICE_DAYS = sorted(
    {int(days) for days in env.list("PKIPORTAL_EXPIRY_NOTICE_DAYS", default=["30", "7", "1"])},
    reverse=True,
)
if not PKIPORTAL_EXPIRY_NOTICE_DAYS or not all(1 <= d <= 365 for d in PKIPORTAL_EXPIRY_NOTICE_DAYS):
    raise ImproperlyConfigured("PKIPORTAL_EXPIRY_NOTICE_DAYS must be days from 1 to 365.")
# Admins (and the RA console) are warned this long before the last agent certificate expires.
PKIPORTAL_KRA_EXPIRY_WARNING_DAYS = env.int("PKIPORTAL_KRA_EXPIRY_WARNING_DAYS", default=30)
CELERY_BEAT_SCHEDULE |= {
    # Daily, in the morning of TIME_ZONE: mail is read, not buried overnight.
    "expiry-notices": {
        "task": "enrollment.tasks.expiry_notices_task",
        "schedule": crontab(minute=0, hour=env.int("PKIPORTAL_EXPIRY_NOTICE_HOUR", default=7)),
        "options": {"expires": 12 * 3600},
    },
    "recovery-cleanup": {
        "task": "enrollment.tasks.recovery_cleanup_task",
        "schedule": timedelta(minutes=10),
        "options": {"expires": 600},
    },
    "api-tokens-purge": {
        "task": "enrollment.tasks.api_tokens_purge_task",
        "schedule": timedelta(days=1),
        "options": {"expires": 12 * 3600},
    },
    # Daily: expired sessions are refused but never deleted by Django itself.
    "sessions-clear-expired": {
        "task": "enrollment.tasks.sessions_clear_expired_task",
        "schedule": timedelta(days=1),
        "options": {"expires": 12 * 3600},
    },
}
# People who have left (README.md, "When someone leaves"): beat revokes the valid
# certificates (affiliationChanged) of accounts deactivated at least this many hours ago.
# S/MIME BR 4.9.1.1 gives 5 days once the mailbox is no longer theirs; the grace period
# spares an account switched off by mistake. Empty or "off": nothing is revoked on its own.
_REVOKE_AFTER = env.str("PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS", default="72").strip()
PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS: int | None = None
if _REVOKE_AFTER.lower() not in ("", "off"):
    if not (
        _REVOKE_AFTER.isascii() and _REVOKE_AFTER.isdigit() and 0 <= int(_REVOKE_AFTER) <= 5 * 24
    ):
        raise ImproperlyConfigured(
            "PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS must be 0 to 120 hours (S/MIME BR "
            f'4.9.1.1: within 5 days), or "off"; it is {_REVOKE_AFTER!r}.'
        )
    PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = int(_REVOKE_AFTER)
# A run that finds more accounts due than this revokes none of them and says so (/health/,
# the RA console): a directory-sync glitch that deactivates hundreds must not mass-revoke.
_REVOKE_CAP = env.str("PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN", default="50").strip()
if not (_REVOKE_CAP.isascii() and _REVOKE_CAP.isdigit() and int(_REVOKE_CAP) >= 1):
    raise ImproperlyConfigured(
        "PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN must be a whole number of accounts, at "
        f"least 1; it is {_REVOKE_CAP!r}."
    )
PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN = int(_REVOKE_CAP)


# Roll-outs (README.md, "Rolling out to many people"): how long an invitation waits to be
# collected, how often an officer may remind the people who have not, and how many people
# one roll-out may invite.
def _whole_number(name: str, default: int, low: int, high: int, unit: str) -> int:
    raw = env.str(name, default=str(default)).strip()
    if not (raw.isascii() and raw.isdigit() and low <= int(raw) <= high):
        raise ImproperlyConfigured(f"{name} must be {low} to {high} {unit}; it is {raw!r}.")
    return int(raw)


PKIPORTAL_ROLLOUT_EXPIRY_DAYS = _whole_number("PKIPORTAL_ROLLOUT_EXPIRY_DAYS", 30, 1, 365, "days")
PKIPORTAL_ROLLOUT_REMIND_HOURS = _whole_number(
    "PKIPORTAL_ROLLOUT_REMIND_HOURS", 24, 1, 24 * 30, "hours"
)
PKIPORTAL_ROLLOUT_MAX_PEOPLE = _whole_number(
    "PKIPORTAL_ROLLOUT_MAX_PEOPLE", 2000, 1, 10000, "people"
)
# Officers' notices of requests awaiting approval (README.md, "RA console"): the first
# after a quiet period goes at once; those within this many minutes after a notice come as
# one summary when the window ends (beat). 0 mails each as it comes, as does a portal
# without a broker (no beat would send the summary).
PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = _whole_number(
    "PKIPORTAL_RA_NOTICE_WINDOW_MINUTES", 15, 0, 24 * 60, "minutes"
)
CELERY_BEAT_SCHEDULE |= {
    # Every minute: the summaries of officers' notice windows that have ended, so one
    # goes at most a minute late. A look at an index of the few rows that have one.
    "approval-notice-digests": {
        "task": "enrollment.tasks.approval_notice_digests_task",
        "schedule": timedelta(minutes=1),
        "options": {"expires": 60},
    },
}
CELERY_BEAT_SCHEDULE |= {
    # Hourly: an invitation not collected in time is withdrawn within the hour after.
    "rollouts-expire": {
        "task": "enrollment.tasks.rollouts_expire_task",
        "schedule": timedelta(hours=1),
        "options": {"expires": 3600},
    },
    # Hourly: invitations whose mail never went out are sent again.
    "rollouts-mail-retry": {
        "task": "enrollment.tasks.rollouts_mail_retry_task",
        "schedule": timedelta(hours=1),
        "options": {"expires": 3600},
    },
}
# The admin's "Revoke selected certificates…" (README.md, "Revocation and CRLs"): up to
# this many are revoked in the officer's request; more are handed to a background task
# that revokes them in batches, so a web server's timeout cannot cut a large one short.
# 0: always in the background.
PKIPORTAL_ADMIN_REVOKE_INLINE_MAX = _whole_number(
    "PKIPORTAL_ADMIN_REVOKE_INLINE_MAX", 100, 0, 10000, "certificates"
)
CELERY_BEAT_SCHEDULE |= {
    # Hourly: a leaver's certificates go within an hour of their grace period's end.
    "leavers-revoke": {
        "task": "enrollment.tasks.leavers_revoke_task",
        "schedule": timedelta(hours=1),
        "options": {"expires": 3600},
    },
}
# The directory (/directory/ and /api/v1/directory/) is for signed-in people; true opens it
# to anonymous readers, e.g. partner organisations exchanging encrypted mail.
PKIPORTAL_DIRECTORY_PUBLIC = env.bool("PKIPORTAL_DIRECTORY_PUBLIC", default=False)

# --- company directory (LDAP) and single sign-on (OIDC) -------------------------------
# Optional; neither package is a dependency. Install django-auth-ldap or mozilla-django-oidc,
# add its backend to AUTHENTICATION_BACKENDS and set these (README.md, "Company directory and
# single sign-on"). Names and addresses land on the account: certificates are issued from it.
# Only the role groups are mirrored by default; other groups stay managed in the admin.
SSO_MIRRORED_GROUPS = env.list(
    "SSO_MIRRORED_GROUPS", default=[PKIPORTAL_RA_OFFICER_GROUP, PKIPORTAL_KRA_GROUP]
)
if env.str("AUTH_LDAP_SERVER_URI", default=""):
    import ldap
    from django_auth_ldap.config import (
        GroupOfNamesType,
        LDAPSearch,
        NestedActiveDirectoryGroupType,
    )

    AUTH_LDAP_SERVER_URI = env.str("AUTH_LDAP_SERVER_URI")
    AUTH_LDAP_START_TLS = env.bool("AUTH_LDAP_START_TLS", default=False)
    AUTH_LDAP_BIND_DN = env.str("AUTH_LDAP_BIND_DN", default="")
    AUTH_LDAP_BIND_PASSWORD = _secret("AUTH_LDAP_BIND_PASSWORD", default="") or ""
    # Kept as text too: the leavers' sync (below) searches with them through ldap3.
    AUTH_LDAP_USER_SEARCH_BASE = env.str("AUTH_LDAP_USER_SEARCH_BASE")
    AUTH_LDAP_USER_FILTER = env.str("AUTH_LDAP_USER_FILTER", default="(uid=%(user)s)")
    AUTH_LDAP_USER_SEARCH = LDAPSearch(
        AUTH_LDAP_USER_SEARCH_BASE, ldap.SCOPE_SUBTREE, AUTH_LDAP_USER_FILTER
    )
    AUTH_LDAP_USER_ATTR_MAP = env.dict(
        "AUTH_LDAP_USER_ATTR_MAP",
        default={
            "first_name": "givenName",
            "last_name": "sn",
            "email": "mail",
            "display_name": "displayName",
            "organizational_unit": "ou",
        },
    )
    AUTH_LDAP_ALWAYS_UPDATE_USER = True  # a renamed person gets the new name next sign-in
    if env.str("AUTH_LDAP_GROUP_SEARCH_BASE", default=""):
        _active_directory = env.str("AUTH_LDAP_GROUP_TYPE", default="") == "active_directory"
        AUTH_LDAP_GROUP_SEARCH = LDAPSearch(
            env.str("AUTH_LDAP_GROUP_SEARCH_BASE"),
            ldap.SCOPE_SUBTREE,
            "(objectClass=group)" if _active_directory else "(objectClass=groupOfNames)",
        )
        AUTH_LDAP_GROUP_TYPE = (
            NestedActiveDirectoryGroupType() if _active_directory else GroupOfNamesType()
        )
        AUTH_LDAP_MIRROR_GROUPS = SSO_MIRRORED_GROUPS

# --- leavers from the directory (README.md, "When someone leaves") ---------------------
# Off by default: true makes beat deactivate, hourly, the accounts django-auth-ldap created
# whose entry AUTH_LDAP_USER_SEARCH_BASE / AUTH_LDAP_USER_FILTER no longer finds or finds
# disabled (enrollment.ldap_sync). Needs AUTH_LDAP_SERVER_URI and the ldap3 package.
PKIPORTAL_LDAP_SYNC_LEAVERS = env.bool("PKIPORTAL_LDAP_SYNC_LEAVERS", default=False)
# Which entries are disabled: Active Directory's ACCOUNTDISABLE bit of userAccountControl
# by default; empty: only entries that are gone count.
PKIPORTAL_LDAP_SYNC_DISABLED_FILTER = env.str(
    "PKIPORTAL_LDAP_SYNC_DISABLED_FILTER", default="(userAccountControl:1.2.840.113556.1.4.803:=2)"
).strip()
# More accounts to deactivate in one run than this, and the run deactivates none.
PKIPORTAL_LDAP_SYNC_MAX_PER_RUN = _whole_number(
    "PKIPORTAL_LDAP_SYNC_MAX_PER_RUN", 25, 0, 100000, "accounts"
)
# CA certificates (PEM) that verify the directory's TLS certificate; empty: the system's.
PKIPORTAL_LDAP_SYNC_CA_FILE = env.str("PKIPORTAL_LDAP_SYNC_CA_FILE", default="")
PKIPORTAL_LDAP_SYNC_TIMEOUT = _whole_number("PKIPORTAL_LDAP_SYNC_TIMEOUT", 10, 1, 120, "seconds")
if PKIPORTAL_LDAP_SYNC_LEAVERS:
    import importlib.util

    from enrollment.ldap_filter import user_attributes

    if not env.str("AUTH_LDAP_SERVER_URI", default=""):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_SYNC_LEAVERS needs the directory people sign in with: set "
            'AUTH_LDAP_SERVER_URI and the other AUTH_LDAP_ settings (README.md, "Company '
            'directory and single sign-on").'
        )
    if importlib.util.find_spec("ldap3") is None:
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_SYNC_LEAVERS is on but the ldap3 package is not installed: "
            "`pip install ldap3`."
        )
    if not all(
        uri.lower().startswith(("ldap://", "ldaps://")) for uri in AUTH_LDAP_SERVER_URI.split()
    ):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_SYNC_LEAVERS reaches AUTH_LDAP_SERVER_URI with ldap3, which takes "
            "ldap:// and ldaps:// URIs (several separated by spaces), not ldapi://."
        )
    if not user_attributes(AUTH_LDAP_USER_FILTER):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_SYNC_LEAVERS matches entries to accounts by the attribute "
            "AUTH_LDAP_USER_FILTER compares with %(user)s, e.g. (sAMAccountName=%(user)s); "
            f"{AUTH_LDAP_USER_FILTER!r} compares none."
        )
    if PKIPORTAL_LDAP_SYNC_DISABLED_FILTER and not (
        PKIPORTAL_LDAP_SYNC_DISABLED_FILTER.startswith("(")
        and PKIPORTAL_LDAP_SYNC_DISABLED_FILTER.endswith(")")
    ):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_SYNC_DISABLED_FILTER must be a parenthesised LDAP filter, e.g. "
            "(nsAccountLock=TRUE), or empty."
        )
    CELERY_BEAT_SCHEDULE |= {
        # Hourly: a person disabled in the directory is a leaver here within the hour.
        "ldap-sync-leavers": {
            "task": "enrollment.tasks.ldap_sync_leavers_task",
            "schedule": timedelta(hours=1),
            "options": {"expires": 3600},
        },
    }

# --- publishing certificates to the organisation's LDAP directory ----------------------
# Optional (README.md, "Publishing to Active Directory / LDAP"): what Windows Certificate
# Services does for Outlook's GAL. Off unless the URI is set; needs the ldap3 package.
PKIPORTAL_LDAP_PUBLISH_URI = env.str("PKIPORTAL_LDAP_PUBLISH_URI", default="").strip()
PKIPORTAL_LDAP_PUBLISH_START_TLS = env.bool("PKIPORTAL_LDAP_PUBLISH_START_TLS", default=False)
# CA certificates (PEM) that verify the directory's TLS certificate; empty: the system's.
PKIPORTAL_LDAP_PUBLISH_CA_FILE = env.str("PKIPORTAL_LDAP_PUBLISH_CA_FILE", default="")
PKIPORTAL_LDAP_PUBLISH_BIND_DN = env.str("PKIPORTAL_LDAP_PUBLISH_BIND_DN", default="")
PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD = _secret("PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD", default="")
PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE = env.str("PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE", default="")
# %(user)s is the account's user name, %(email)s its address, both escaped (RFC 4515).
PKIPORTAL_LDAP_PUBLISH_FILTER = env.str("PKIPORTAL_LDAP_PUBLISH_FILTER", default="(uid=%(user)s)")
PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES = env.list(
    "PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES", default=["userCertificate;binary"]
)
# "encryption": the certificates of encryption and dual-use templates, what a sender needs
# (Outlook skips the others when it encrypts); "all" adds signing-only ones.
PKIPORTAL_LDAP_PUBLISH_CERTIFICATES = env.str(
    "PKIPORTAL_LDAP_PUBLISH_CERTIFICATES", default="encryption"
)
PKIPORTAL_LDAP_PUBLISH_TIMEOUT = env.int("PKIPORTAL_LDAP_PUBLISH_TIMEOUT", default=10)
PKIPORTAL_LDAP_RECONCILE_MINUTES = env.int("PKIPORTAL_LDAP_RECONCILE_MINUTES", default=60)
# People the full sweep visits per reconciliation run (one LDAP search each), resuming
# where the last run stopped: at the default and hourly runs, 480,000 people a day.
PKIPORTAL_LDAP_SWEEP_BATCH = env.int("PKIPORTAL_LDAP_SWEEP_BATCH", default=20000)
if PKIPORTAL_LDAP_PUBLISH_URI:
    import importlib.util

    _LDAP_ATTRIBUTES = {
        "usercertificate",
        "usercertificate;binary",
        "usersmimecertificate",
        "usersmimecertificate;binary",
    }
    if importlib.util.find_spec("ldap3") is None:
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_PUBLISH_URI is set but the ldap3 package is not installed: "
            "`pip install ldap3`."
        )
    if not PKIPORTAL_LDAP_PUBLISH_URI.lower().startswith(("ldap://", "ldaps://")):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_PUBLISH_URI must start with ldap:// or ldaps://."
        )
    if PKIPORTAL_LDAP_PUBLISH_START_TLS and PKIPORTAL_LDAP_PUBLISH_URI.lower().startswith("ldaps"):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_PUBLISH_START_TLS upgrades an ldap:// connection; ldaps:// is "
            "TLS already."
        )
    if not PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE:
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE is required with PKIPORTAL_LDAP_PUBLISH_URI."
        )
    try:
        _probe = PKIPORTAL_LDAP_PUBLISH_FILTER % {"user": "u", "email": "e"}
    except (KeyError, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_PUBLISH_FILTER may use %(user)s and %(email)s only "
            f"(write a literal % as %%): {exc!r}"
        ) from exc
    if _probe == PKIPORTAL_LDAP_PUBLISH_FILTER or not _probe.startswith("("):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_PUBLISH_FILTER must be a parenthesised LDAP filter naming "
            "%(user)s or %(email)s, e.g. (sAMAccountName=%(user)s)."
        )
    if not PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES or not all(
        name.lower() in _LDAP_ATTRIBUTES for name in PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES
    ):
        raise ImproperlyConfigured(
            "PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES takes userCertificate;binary (OpenLDAP), "
            "userCertificate (Active Directory) and/or userSMIMECertificate[;binary]."
        )
    if PKIPORTAL_LDAP_PUBLISH_CERTIFICATES not in ("encryption", "all"):
        raise ImproperlyConfigured(
            'PKIPORTAL_LDAP_PUBLISH_CERTIFICATES must be "encryption" or "all".'
        )
    if not 1 <= PKIPORTAL_LDAP_PUBLISH_TIMEOUT <= 120:
        raise ImproperlyConfigured("PKIPORTAL_LDAP_PUBLISH_TIMEOUT must be 1 to 120 seconds.")
    if not 5 <= PKIPORTAL_LDAP_RECONCILE_MINUTES <= 1440:
        raise ImproperlyConfigured("PKIPORTAL_LDAP_RECONCILE_MINUTES must be 5 to 1440.")
    if PKIPORTAL_LDAP_SWEEP_BATCH < 0:
        raise ImproperlyConfigured("PKIPORTAL_LDAP_SWEEP_BATCH must be 0 (no sweep) or more.")
    CELERY_BEAT_SCHEDULE |= {
        # Makes the directory match the database: catches missed events, a directory that
        # was down, entries edited by hand, expiries and a newly enabled setting.
        "ldap-reconcile": {
            "task": "enrollment.tasks.ldap_reconcile_task",
            "schedule": timedelta(minutes=PKIPORTAL_LDAP_RECONCILE_MINUTES),
            "options": {"expires": PKIPORTAL_LDAP_RECONCILE_MINUTES * 60},
        },
    }
# --- forwarding the audit trail to a SIEM (README.md, "Forwarding the audit trail to a
# SIEM") --------------------------------------------------------------------------------
# Empty: off. tcp://host:port (RFC 6587), tls://host:port (RFC 5425, the server's
# certificate checked against PKIPORTAL_AUDIT_SYSLOG_CA or the system's CAs) or
# udp://host:port (best effort: a datagram lost is an event the SIEM never gets).
PKIPORTAL_AUDIT_SYSLOG = env.str("PKIPORTAL_AUDIT_SYSLOG", default="").strip()
PKIPORTAL_AUDIT_SYSLOG_CA = env.str("PKIPORTAL_AUDIT_SYSLOG_CA", default="").strip()
PKIPORTAL_AUDIT_SYSLOG_FACILITY = (
    env.str("PKIPORTAL_AUDIT_SYSLOG_FACILITY", default="authpriv").strip().lower()
)
PKIPORTAL_AUDIT_SYSLOG_INTERVAL = _whole_number(
    "PKIPORTAL_AUDIT_SYSLOG_INTERVAL", 30, 5, 3600, "seconds"
)
if PKIPORTAL_AUDIT_SYSLOG:
    from enrollment.syslog import FACILITIES as _SYSLOG_FACILITIES
    from enrollment.syslog import parse_target as _syslog_target

    try:
        _AUDIT_SYSLOG_TARGET = _syslog_target(PKIPORTAL_AUDIT_SYSLOG)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"PKIPORTAL_AUDIT_SYSLOG must be tcp://host:port, tls://host:port or "
            f"udp://host:port, or empty; {PKIPORTAL_AUDIT_SYSLOG!r}: {exc}."
        ) from None
    if PKIPORTAL_AUDIT_SYSLOG_CA and _AUDIT_SYSLOG_TARGET.scheme != "tls":
        raise ImproperlyConfigured(
            "PKIPORTAL_AUDIT_SYSLOG_CA verifies a tls:// receiver; PKIPORTAL_AUDIT_SYSLOG is "
            f"{_AUDIT_SYSLOG_TARGET.scheme}://."
        )
    if PKIPORTAL_AUDIT_SYSLOG_CA and not Path(PKIPORTAL_AUDIT_SYSLOG_CA).is_file():
        raise ImproperlyConfigured(
            f"PKIPORTAL_AUDIT_SYSLOG_CA ({PKIPORTAL_AUDIT_SYSLOG_CA}) is not a readable file "
            "of PEM CA certificates."
        )
    if PKIPORTAL_AUDIT_SYSLOG_FACILITY not in _SYSLOG_FACILITIES:
        raise ImproperlyConfigured(
            f"PKIPORTAL_AUDIT_SYSLOG_FACILITY must be one of {', '.join(_SYSLOG_FACILITIES)}; "
            f"it is {PKIPORTAL_AUDIT_SYSLOG_FACILITY!r}."
        )
    CELERY_BEAT_SCHEDULE |= {
        # Every half minute by default: the SIEM sees an event within a minute.
        "audit-syslog": {
            "task": "enrollment.tasks.audit_ship_task",
            "schedule": timedelta(seconds=PKIPORTAL_AUDIT_SYSLOG_INTERVAL),
            "options": {"expires": PKIPORTAL_AUDIT_SYSLOG_INTERVAL},
        },
    }
# Read only where mozilla-django-oidc's URLs are mounted (below, or the tests' own).
OIDC_CALLBACK_CLASS = "accounts.oidc.PortalOIDCCallbackView"
if env.str("OIDC_RP_CLIENT_ID", default=""):
    INSTALLED_APPS.append("mozilla_django_oidc")
    OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID")
    OIDC_RP_CLIENT_SECRET = _secret("OIDC_RP_CLIENT_SECRET", default="") or ""
    OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT")
    OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT")
    OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT")
    OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="") or None
    OIDC_RP_SIGN_ALGO = env.str("OIDC_RP_SIGN_ALGO", default="RS256")
    OIDC_RP_SCOPES = env.str("OIDC_RP_SCOPES", default="openid email profile")
    # Claims accounts.oidc.PortalOIDCBackend maps beyond the standard given_name,
    # family_name, name and email.
    OIDC_CLAIM_USERNAME = env.str("OIDC_CLAIM_USERNAME", default="preferred_username")
    OIDC_CLAIM_ORGANIZATIONAL_UNIT = env.str("OIDC_CLAIM_ORGANIZATIONAL_UNIT", default="department")
    OIDC_CLAIM_GROUPS = env.str("OIDC_CLAIM_GROUPS", default="groups")
    # A sign-in whose email_verified claim is not true is refused: the address goes into
    # certificates. true accepts one without the claim, for a provider that never sends it
    # and hands out only addresses it has checked; an explicit false is refused anyway.
    OIDC_TRUST_PROVIDER_EMAIL = env.bool("OIDC_TRUST_PROVIDER_EMAIL", default=False)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"refusals": {"()": "pkiportal.log_filters.RefusalWithoutTraceback"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["refusals"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
