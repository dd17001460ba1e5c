"""A throwaway OpenLDAP server (Debian's slapd) for the tests that publish to a directory
or read who has left it (with two Active Directory attributes added to its schema).

One per test session, started on first use: a minimal slapd.conf (core, cosine and
inetOrgPerson schemas; mdb in a temporary directory) on a free localhost port. Entries are
written and read with the ldap-utils commands, never with the portal's own LDAP code, so
the tests see what any other LDAP client would. CI installs both packages (.ci/run); a
machine without them fails the tests that need them, saying what to install.
"""

from __future__ import annotations

import base64
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net import free_port

SUFFIX = "dc=example,dc=com"
PEOPLE = f"ou=People,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-secret-for-tests"
SERVICE_DN = f"cn=pkiportal,{SUFFIX}"
SERVICE_PASSWORD = "service-secret-for-tests"
SLAPD = "/usr/sbin/slapd"
INSTALL = "apt-get install -y slapd ldap-utils"

CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {directory}/ad.schema
TLSCACertificateFile {directory}/ca.pem
TLSCertificateFile {directory}/server.pem
TLSCertificateKeyFile {directory}/server.key
pidfile {directory}/slapd.pid
argsfile {directory}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 33554432
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_password}
directory {directory}/data
# The portal's service account may write the certificate attributes and nothing else,
# as the README asks of an Active Directory account.
access to attrs=userCertificate,userSMIMECertificate
    by dn.exact="{service_dn}" write
    by * read
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to * by * read
"""
# The two Active Directory attributes the directory leavers' sync reads, with AD's OIDs and
# syntaxes (userAccountControl an INTEGER, so slapd's integerBitAndMatch, AD's
# 1.2.840.113556.1.4.803, applies), on an auxiliary class of our own (a 2.25 UUID OID).
AD_SCHEMA = """\
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
    EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 2.25.254314230655238693064564238290723883265 NAME 'pkiportalTestAdAccount'
    SUP top AUXILIARY MAY ( sAMAccountName $ userAccountControl ) )
"""
# userAccountControl of an enabled user (NORMAL_ACCOUNT) and of a disabled one
# (NORMAL_ACCOUNT | ACCOUNTDISABLE).
AD_ENABLED = 512
AD_DISABLED = 514


class Slapd:
    """slapd on 127.0.0.1, with helpers that speak to it through ldap-utils as its root."""

    def __init__(self, directory: Path) -> None:
        for tool in (SLAPD, "ldapadd", "ldapsearch", "ldapmodify", "ldapdelete"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is missing: install Debian's slapd and ldap-utils ({INSTALL})")
        self.directory = directory
        self.port = free_port()
        self.tls_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://localhost:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        """The CA that issued slapd's TLS certificate (for localhost and 127.0.0.1)."""
        return self.directory / "ca.pem"

    def _make_tls_certificates(self) -> None:
        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=self.directory, check=True,
                           capture_output=True, timeout=30)  # fmt: skip

        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=slapd test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=localhost")  # fmt: skip
        (self.directory / "server.ext").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        )
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "server.ext",
                "-out", "server.pem")  # fmt: skip

    def start(self) -> None:
        (self.directory / "data").mkdir(exist_ok=True)
        self._make_tls_certificates()
        (self.directory / "ad.schema").write_text(AD_SCHEMA)
        conf = self.directory / "slapd.conf"
        conf.write_text(
            CONFIG.format(
                directory=self.directory,
                suffix=SUFFIX,
                root_dn=ROOT_DN,
                root_password=ROOT_PASSWORD,
                service_dn=SERVICE_DN,
            )
        )
        self._launch(conf)
        self.add(
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
            "o: Example Org\n\n"
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: People\n\n"
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: pkiportal\n"
            f"userPassword: {SERVICE_PASSWORD}\n"
        )

    def _launch(self, conf: Path) -> None:
        # -d 0: stay in the foreground (so the fixture owns the process), log nothing.
        self.process = subprocess.Popen(
            [
                SLAPD,
                "-f",
                str(conf),
                "-h",
                f"{self.uri}/ ldaps://127.0.0.1:{self.tls_port}/",
                "-d",
                "0",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "slapd.log").open("ab"),
        )
        deadline = time.monotonic() + 20
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "slapd.log").read_text(errors="replace")
                self.stop()
                pytest.fail(f"slapd did not start:\n{log}")
            time.sleep(0.05)

    def restart(self) -> None:
        """Stop and start slapd on the same ports and data: every open connection drops,
        as when a domain controller restarts."""
        self.stop()
        deadline = time.monotonic() + 10
        while self.answers() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._launch(self.directory / "slapd.conf")

    def answers(self) -> bool:
        try:
            for port in (self.port, self.tls_port):
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    # --- ldap-utils as the directory's administrator ---------------------------------

    def _run(self, tool: str, *args: str, ldif: str | None = None) -> str:
        completed = subprocess.run(
            [tool, "-x", "-H", self.uri, "-D", ROOT_DN, "-w", ROOT_PASSWORD, *args],
            input=ldif.encode() if ldif is not None else None,
            capture_output=True,
            timeout=30,
        )
        if completed.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} failed ({completed.returncode}): "
                f"{completed.stderr.decode(errors='replace')}"
            )
        return completed.stdout.decode(errors="replace")

    def add(self, ldif: str) -> None:
        self._run("ldapadd", ldif=ldif)

    def modify(self, ldif: str) -> None:
        self._run("ldapmodify", ldif=ldif)

    def reset_people(self) -> None:
        """Remove every person, keeping ou=People."""
        found = self._run("ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-b", PEOPLE, "-s", "one",
                          "1.1")  # fmt: skip
        for line in found.splitlines():
            if line.startswith("dn:: "):  # not plain ASCII: base64 (RFC 2849)
                self._run("ldapdelete", base64.b64decode(line[5:]).decode())
            elif line.startswith("dn: "):
                self._run("ldapdelete", line[4:])

    def add_person(self, uid: str, mail: str, *, certificates: tuple[bytes, ...] = ()) -> str:
        dn = f"uid={uid},{PEOPLE}"
        values = "".join(
            f"userCertificate;binary:: {base64.b64encode(der).decode()}\n" for der in certificates
        )

        def b64(text: str) -> str:  # any UTF-8 name, as RFC 2849 asks for non-ASCII
            return base64.b64encode(text.encode()).decode()

        self.add(
            f"dn:: {b64(dn)}\nobjectClass: inetOrgPerson\nuid:: {b64(uid)}\ncn:: {b64(uid)}\n"
            f"sn:: {b64(uid)}\nmail: {mail}\n{values}"
        )
        return dn

    def add_ad_person(self, sam: str, *, account_control: int = AD_ENABLED) -> str:
        """An Active Directory-like user: sAMAccountName and userAccountControl."""
        dn = f"cn={sam},{PEOPLE}"
        self.add(
            f"dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: pkiportalTestAdAccount\n"
            f"cn: {sam}\nsn: {sam}\nsAMAccountName: {sam}\n"
            f"userAccountControl: {account_control}\n"
        )
        return dn

    def replace(self, dn: str, attribute: str, value: str) -> None:
        self.modify(f"dn: {dn}\nchangetype: modify\nreplace: {attribute}\n{attribute}: {value}\n")

    def delete(self, dn: str) -> None:
        self._run("ldapdelete", dn)

    def values(self, dn: str, attribute: str = "userCertificate;binary") -> list[bytes]:
        """What `ldapsearch` reads from an entry's attribute: the DER values."""
        output = self._run("ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-b", dn, "-s", "base",
                           "(objectClass=*)", attribute)  # fmt: skip
        return [
            base64.b64decode(line.split(":: ", 1)[1])
            for line in output.splitlines()
            if line.lower().startswith(attribute.split(";")[0].lower()) and ":: " in line
        ]


@pytest.fixture(scope="session")
def slapd() -> Iterator[Slapd]:
    """The session's slapd, started on first use and stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="pkiportal-slapd-") as directory:
        server = Slapd(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
