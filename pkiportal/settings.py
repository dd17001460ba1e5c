"""The one settings module: everything comes from the environment (12-factor).

Defaults give the embedded setup a person trying pkiportal expects: SQLite under var/,
tasks run inline (no broker), mail to the console. Production sets DATABASE_URL,
CELERY_BROKER_URL, SECRET_KEY and the CA key passphrase. Every variable is documented in
README.md. Secrets can come from `<NAME>_FILE` instead of `<NAME>`.
"""

import secrets
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

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
    return env.str(name, default=default)


def _embedded_secret_key() -> str:
    """A per-installation key kept under var/ so the embedded default needs no set-up."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _secret("SECRET_KEY") or _embedded_secret_key()
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
    "axes",
    "accounts",
    "enrollment",
    "directory",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "init_command", "PRAGMA journal_mode=WAL;"
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
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
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

# Security headers; the TLS-only ones are switched on by the operator behind HTTPS.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=256 * 1024)

# Mail: console by default; EMAIL_URL=smtp+tls://user:pass@host:587 in production.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="pkiportal@localhost")

# Celery: no broker configured means every task runs inline, in the request that queued it.
CELERY_TASK_ALWAYS_EAGER = not env.str("CELERY_BROKER_URL", default="")
# In-process transport when unset, so nothing ever falls back to Celery's amqp://localhost.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "memory://"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TIMEZONE = TIME_ZONE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # knox stores only a hash of each API token, never the token itself.
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "pkiportal.api.exception_handler",
}
REST_KNOX = {"TOKEN_TTL": timedelta(days=env.int("API_TOKEN_TTL_DAYS", default=90))}
SPECTACULAR_SETTINGS = {
    "TITLE": "pkiportal API",
    "DESCRIPTION": "Self-service S/MIME PKI: enrolment, certificates, directory.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- PKI -----------------------------------------------------------------------------
# The public base URL embedded in issued certificates (CDP, AIA). Must be plain http:
# relying parties fetch CRLs and CA certificates without TLS (RFC 5280 4.2.1.13).
PKIPORTAL_BASE_URL = env.str("PKIPORTAL_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
if not PKIPORTAL_BASE_URL.startswith("http://"):
    raise ImproperlyConfigured("PKIPORTAL_BASE_URL must be an http:// URL (CRLs and AIA).")
PKIPORTAL_ORGANIZATION_NAME = env.str("PKIPORTAL_ORGANIZATION_NAME", default="Example Org")
PKIPORTAL_COUNTRY_NAME = env.str("PKIPORTAL_COUNTRY_NAME", default="")
# Sponsor-validated certificates name the organisation's registration (S/MIME BR 7.1.4.2.2 d),
# e.g. "NTRGB-12345678" or "LEIXG-<LEI>". The default is a placeholder for trying it out.
PKIPORTAL_ORGANIZATION_IDENTIFIER = env.str(
    "PKIPORTAL_ORGANIZATION_IDENTIFIER", default="NTRUS-0000000"
)
# Online CA keys: encrypted PKCS#8 files in this directory, never in the database.
PKIPORTAL_KEY_BACKEND = env.str("PKIPORTAL_KEY_BACKEND", default="file")
PKIPORTAL_KEY_DIR = Path(env.str("PKIPORTAL_KEY_DIR", default=str(VAR_DIR / "keys")))
PKIPORTAL_CA_KEY_PASSPHRASE = _secret("PKIPORTAL_CA_KEY_PASSPHRASE", default="") or ""
# Embedded default only: with no passphrase configured, `create_pki --embedded-passphrase`
# writes a random one here and the keystore reads it at signing time. Production sets the
# variable (or _FILE) instead, so the passphrase never sits beside the keys.
PKIPORTAL_EMBEDDED_PASSPHRASE_FILE = PKIPORTAL_KEY_DIR / "passphrase"
# Roles are Django groups, so a directory's group sync (LDAP/OIDC claims) can grant them.
PKIPORTAL_RA_OFFICER_GROUP = env.str("PKIPORTAL_RA_OFFICER_GROUP", default="RA officers")
PKIPORTAL_KRA_GROUP = env.str("PKIPORTAL_KRA_GROUP", default="Key recovery agents")
# Limits that protect the CA from a runaway script or a stolen session.
PKIPORTAL_MAX_VALID_PER_TEMPLATE = env.int("PKIPORTAL_MAX_VALID_PER_TEMPLATE", default=3)
PKIPORTAL_ENROLL_RATE_PER_HOUR = env.int("PKIPORTAL_ENROLL_RATE_PER_HOUR", default=20)
PKIPORTAL_PKCS12_PASSWORD_MIN_LENGTH = env.int("PKIPORTAL_PKCS12_PASSWORD_MIN_LENGTH", default=12)
# Keep each online CA key decrypted in the signing process's memory after first use:
# decrypting per signature costs ~75 ms (RSA key validation). Never in a shared cache.
PKIPORTAL_CA_KEY_PROCESS_CACHE = env.bool("PKIPORTAL_CA_KEY_PROCESS_CACHE", default=True)
PKIPORTAL_CRL_VALIDITY_DAYS = env.int("PKIPORTAL_CRL_VALIDITY_DAYS", default=7)
PKIPORTAL_ROOT_CRL_VALIDITY_DAYS = env.int("PKIPORTAL_ROOT_CRL_VALIDITY_DAYS", default=365)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
