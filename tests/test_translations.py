"""The translation catalogues: every text a person reads is marked, every marked text is
translated, and the committed .mo files are the .po files compiled.

gettext's tools (xgettext, msgfmt) are needed for the catalogue checks: .ci/run installs
Debian's gettext. The portal itself needs none: the .mo files are committed.
"""

from __future__ import annotations

import ast
import gettext
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from django.conf import settings
from django.template.base import Lexer, TokenType

ROOT = Path(settings.BASE_DIR)
TEMPLATES = ROOT / "templates"
LANGUAGES = [code for code, _name in settings.LANGUAGES if code != "en"]

needs_gettext = pytest.mark.skipif(
    not (shutil.which("msgfmt") and shutil.which("xgettext")),
    reason="gettext's msgfmt and xgettext are not installed (.ci/run installs them)",
)

# --- templates ---------------------------------------------------------------------------

# Words that are the same in every language we ship: names of things, formats, protocols.
SAME_IN_EVERY_LANGUAGE = set(
    [
        "pkiportal",
        "S/MIME",
        "PKCS#12",
        "PKCS#7",
        "PKCS#10",
        "PEM",
        "DER",
        "CSR",
        "CSRs",
        "CRL",
        "CRLs",
        "OCSP",
        "API",
        "EST",
        "URL",
        "SHA-256",
        "SHA-1",
        "RSA",
        "RSA-2048",
        "RSA-3072",
        "RSA-4096",
        "P-256",
        "P-384",
        "EC",
        "ECDSA",
        "AES-256",
        "3DES",
        "X.509",
        "Outlook",
        "Thunderbird",
        "Apple",
        "Mail",
        "iOS",
        "macOS",
        "Windows",
        "Android",
        "openssl",
        "gpgsm",
        "certreq",
        "LDAP",
        "SSO",
        "OIDC",
        "TOTP",
        "FIDO2",
        "WebAuthn",
        "JSON",
        "CSV",
        "vCard",
        ".p12",
        ".pfx",
        ".cer",
        ".crt",
        ".pem",
        ".p7b",
        "OK",
        "ID",
        "KRA",
        "RA",
        "CA",
        "Swagger",
        "UI",
        "OpenAPI",
        "thisUpdate",
        "nextUpdate",
    ]
)
# Elements whose text is code, a command line or a value, not prose.
VERBATIM = {"code", "pre", "kbd", "samp", "script", "style"}
ATTRIBUTES = re.compile(
    r"""\b(?:title|aria-label|aria-description|placeholder|alt)\s*=\s*"([^"{}]*)\"""", re.I
)
ENTITY = re.compile(r"&[#\w]+;")
WORD = re.compile(r"[^\W\d_][\w'’#./-]*")


def _prose(text: str) -> list[str]:
    """The words of ``text`` that would need translating (not file names: slug.crl)."""
    text = re.sub(r"[\w-]*\.(crl|crt|pem|p7b|p12|cer|vcf)\b", " ", text)
    return [
        word
        for word in WORD.findall(ENTITY.sub(" ", text))
        if word.strip(".,:;!?'’") not in SAME_IN_EVERY_LANGUAGE and re.search(r"[a-z]", word)
    ]


def untranslated(source: str) -> list[str]:
    """Text of a template shown as it is, outside {% translate %} / {% blocktranslate %}:
    in elements, and in the attributes people read (title, aria-label, placeholder, alt)."""
    found: list[str] = []
    skipping = 0  # inside {% blocktranslate %} or {% comment %}
    verbatim: list[str] = []  # open elements whose text is code, or in a language they name
    in_tag, tag, text = False, "", ""

    def text_ends() -> None:
        nonlocal text
        # An include made of attributes (name="{% translate ... %}") for a tag elsewhere.
        text = re.sub(r'[\w-]+="', " ", text)
        if not verbatim and (words := _prose(text)):
            found.append(" ".join(words))
        text = ""

    def tag_ends() -> None:
        for value in ATTRIBUTES.findall(tag):
            if words := _prose(value):
                found.append(" ".join(words))
        name = re.match(r"<\s*(/?)\s*([a-zA-Z0-9]+)", tag)
        if not name:
            return
        closing, element = name.group(1) == "/", name.group(2).lower()
        if closing and verbatim and verbatim[-1] == element:
            verbatim.pop()
        elif (
            not closing
            and not tag.rstrip().endswith("/")
            and (element in VERBATIM or (element == "span" and re.search(r"\slang=", tag)))
        ):
            verbatim.append(element)

    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.BLOCK:
            name = token.contents.split()[0] if token.contents else ""
            if name in ("blocktranslate", "blocktrans", "comment"):
                skipping += 1
            elif name in ("endblocktranslate", "endblocktrans", "endcomment"):
                skipping -= 1
            continue
        if token.token_type != TokenType.TEXT or skipping:
            continue
        # A tag may span tokens (<a href="{% url ... %}">): its state carries over.
        for char in token.contents:
            if in_tag:
                tag += char
                if char == ">":
                    in_tag = False
                    tag_ends()
            elif char == "<":
                text_ends()
                in_tag, tag = True, "<"
            else:
                text += char
        if not in_tag:
            text_ends()
    return found


def shown_templates() -> list[Path]:
    return sorted(
        path
        for path in [*TEMPLATES.rglob("*.html"), *TEMPLATES.rglob("*.txt")]
        # Swagger UI's page is drf-spectacular's markup around its script.
        if "drf_spectacular" not in path.parts
    )


@pytest.mark.parametrize("path", shown_templates(), ids=lambda p: str(p.relative_to(TEMPLATES)))
def test_every_text_of_a_template_is_marked_for_translation(path):
    assert untranslated(path.read_text()) == []


def test_the_template_check_finds_text_left_unmarked():
    source = (
        "{% load i18n %}<h1>{% translate 'Certificates' %}</h1>"
        '<p title="Copy it">Download your certificate</p>'
        "{% blocktranslate trimmed %}Renew it{% endblocktranslate %}"
        "<code>openssl pkcs12 -in x.p12</code><td>{{ cert.serial }}</td><th>PEM</th>"
    )
    assert untranslated(source) == ["Copy it", "Download your certificate"]


# --- Python ------------------------------------------------------------------------------

# Modules whose messages reach a person: pages, forms, flash messages, API bodies.
FACING_PEOPLE = sorted(
    {
        *ROOT.glob("enrollment/*views.py"),
        *ROOT.glob("enrollment/*forms.py"),
        *ROOT.glob("enrollment/api/*.py"),
        *ROOT.glob("directory/*.py"),
        *ROOT.glob("directory/api/*.py"),
        *(
            ROOT / name
            for name in (
                "enrollment/services.py",
                "enrollment/recovery.py",
                "enrollment/rollouts.py",
                "enrollment/leavers.py",
                "enrollment/bulk_revoke.py",
                "enrollment/ra_services.py",
                "enrollment/mailboxes.py",
                "enrollment/scopes.py",
                "accounts/views.py",
                "accounts/forms.py",
                "accounts/mfa.py",
                "accounts/passkeys.py",
                "pkiportal/api.py",
            )
        ),
    }
)
# Errors and messages whose text is shown as it was raised.
SHOWN = {
    "EnrollmentError",
    "PolicyViolation",
    "NotPermitted",
    "InvalidState",
    "ConfigurationError",
    "RateLimited",
    "Busy",
    "ValidationError",
    "SecondFactorError",
    "PasskeyError",
}
FLASHED = {"debug", "info", "success", "warning", "error"}
WORDED = {"label", "help_text"}


def _literal(node: ast.AST | None) -> bool:
    """Text written out in English: a string or an f-string, not gettext's."""
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(node.value.strip())
    )


def _name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def unmarked_messages(source: str) -> list[str]:
    """Messages written out in English where a person reads them: the text of a shown
    error, a flash message, a form's label or help, an add_error; and an X.509 error's
    English passed on as it is instead of through EnrollmentError.from_x509."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        called = _name(node.func)
        message: ast.AST | None = None
        if called in SHOWN:
            message = node.args[0] if node.args else None
            for keyword in node.keywords:
                if keyword.arg in ("message", "detail"):
                    message = keyword.value
            if (
                isinstance(message, ast.Attribute)
                and message.attr == "message"
                and called != "ValidationError"
            ):
                found.append(f"line {node.lineno}: {called}(….message): use from_x509")
                continue
        elif (
            called in FLASHED
            and _name(getattr(node.func, "value", node)) == "messages"
            or called == "add_error"
        ):
            message = node.args[1] if len(node.args) > 1 else None
        for keyword in node.keywords:
            if keyword.arg in WORDED and _literal(keyword.value):
                found.append(f"line {node.lineno}: {keyword.arg}={ast.unparse(keyword.value)}")
        if _literal(message):
            shown = ast.unparse(message)[:60]  # type: ignore[arg-type]
            found.append(f"line {node.lineno}: {called}({shown})")
    return found


@pytest.mark.parametrize("path", FACING_PEOPLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_message_a_person_reads_is_marked_for_translation(path):
    assert unmarked_messages(path.read_text()) == []


def test_the_python_check_finds_messages_left_unmarked():
    source = """
raise PolicyViolation(f"Key {size} too small", field="csr")
raise PolicyViolation(_("Key %(size)s too small"), params={"size": size})
raise NotPermitted(exc.message)
messages.success(request, "Revoked.")
messages.success(request, _("Revoked."))
forms.CharField(label="Reason", help_text=_("Why"))
"""
    assert unmarked_messages(source) == [
        "line 2: PolicyViolation(f'Key {size} too small')",
        "line 4: NotPermitted(….message): use from_x509",
        "line 5: success('Revoked.')",
        "line 7: label='Reason'",
    ]


# --- catalogues --------------------------------------------------------------------------


def catalogue(language: str) -> Path:
    return ROOT / "locale" / language / "LC_MESSAGES" / "django.po"


def msgids(po: Path) -> set[tuple[str, str]]:
    """(context, msgid) of each entry, one line each as msgcat writes them."""
    entries = subprocess.run(
        ["msgcat", "--no-wrap", "--sort-output", str(po)], capture_output=True, text=True
    ).stdout
    return set(re.findall(r'^(?:msgctxt "(.*)"\n)?msgid "(.*)"$', entries, re.M)) - {("", "")}


@needs_gettext
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_marked_text_is_translated(language):
    """msgfmt's own count: no entry untranslated, none fuzzy (a guess no one checked); and
    its --check: every placeholder of the English is in the translation."""
    po = catalogue(language)
    result = subprocess.run(
        ["msgfmt", "--check", "--statistics", "-o", "/dev/null", str(po)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "untranslated" not in result.stderr, result.stderr
    assert "fuzzy" not in result.stderr, result.stderr


@needs_gettext
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_committed_mo_file_is_the_po_file_compiled(language, tmp_path):
    po = catalogue(language)
    fresh = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "-o", str(fresh), str(po)], check=True)
    with fresh.open("rb") as new, po.with_suffix(".mo").open("rb") as committed:
        assert gettext.GNUTranslations(committed)._catalog == gettext.GNUTranslations(new)._catalog  # type: ignore[attr-defined]


@needs_gettext
def test_the_catalogues_hold_every_marked_text_and_no_other(tmp_path):
    """makemessages over a copy of the code must find exactly the texts the committed
    catalogue holds: a text marked since and not translated fails here, as does one
    translated but no longer used."""
    copy = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(".*", "tests", "bench", "var", "staticfiles", "*.mo", "docs"),
    )
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "makemessages",
            "--all",
            "--no-location",
            "--no-obsolete",
            "--ignore=tests",
            "--ignore=bench",
            "--verbosity=0",
        ],
        cwd=copy,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PKIPORTAL_VAR_DIR": str(tmp_path / "var")},
    )
    for language in LANGUAGES:
        gathered = copy / "locale" / language / "LC_MESSAGES" / "django.po"
        committed = catalogue(language)
        new, gone = msgids(gathered) - msgids(committed), msgids(committed) - msgids(gathered)
        assert (sorted(new), sorted(gone)) == ([], []), "run `make messages` and translate"
