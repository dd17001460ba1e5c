"""The PKCS#11 backend of the key store: online CA keys that never leave an HSM.

Part of keystore.py's narrow door, and imported by it alone. A key is generated in the
token (sensitive, never extractable, signing only) or chosen among keys the operator made
there; the CA row's key_reference names it by an RFC 7512 URI (``pkcs11:object=...;id=...``)
within the token that the settings name.

cryptography's builders dispatch on its private-key interfaces and call the key's own
``sign()``: ``TokenEcKey`` and ``TokenRsaKey`` implement those interfaces, hash on the host
and have the token sign the digest (CKM_ECDSA, CKM_RSA_PKCS over a DigestInfo), so
certificates, OCSP responses and CRLs (crl_fast's prehashed path) are built exactly as with
a file key. Raw mechanisms are the ones every HSM offers, and they let a CRL of a million
entries be hashed outside the library lock.

Each process opens the library and one logged-in session lazily, keyed by its PID: a
forked gunicorn worker or Celery child initialises the library afresh (PKCS#11 2.40 6.7.7)
and never touches the handles it inherited; a module that does not reset on fork answers
"already initialised", and the child carries on with the library state it inherited. One
lock per process serialises every call into the library, which is initialised without OS
locking; a fork makes the child a new one (the thread holding the parent's is not in the
child). PKCS#11 calls have no timeout: a caller waits for the lock a bounded time and
reports a busy HSM instead of hanging (the vendor client's own timeouts bound the call
itself). A session or login the token dropped is opened again once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, unquote, unquote_to_bytes

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.utils import Buffer

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from enrollment.exceptions import KeyStoreError
from enrollment.x509 import keys
from enrollment.x509.keys import PrivateKey

NAME = "pkcs11"
LABEL_PREFIX = "pkiportal-"

_T = TypeVar("_T")

# RFC 8017 9.2 note 1: the DER DigestInfo prefix of each hash a CA signs with.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
# CKA_EC_PARAMS as a namedCurve OID (X9.62), for the curves S/MIME BR 6.1.5 allows.
_CURVES: dict[bytes, type[ec.EllipticCurve]] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1,
    bytes.fromhex("06052b81040022"): ec.SECP384R1,
    bytes.fromhex("06052b81040023"): ec.SECP521R1,
}


def _library() -> Any:
    """python-pkcs11, imported only when a CA key lives in a token."""
    try:
        import pkcs11
    except ImportError as exc:
        raise KeyStoreError(
            "This CA's key is in an HSM (PKCS#11) but python-pkcs11 is not installed: "
            "pip install -r requirements.txt."
        ) from exc
    return pkcs11


# --- which key ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenKeySelector:
    """A key in the configured token, by CKA_LABEL and/or CKA_ID (at least one)."""

    label: str = ""
    id: bytes = b""

    def __post_init__(self) -> None:
        if not self.label and not self.id:
            raise KeyStoreError("Name the key in the HSM by its label, its id or both.")

    def uri(self) -> str:
        """RFC 7512: the key within the token; the token itself comes from the settings."""
        parts = []
        if self.label:
            parts.append("object=" + quote(self.label, safe=""))
        if self.id:
            parts.append("id=" + "".join(f"%{octet:02x}" for octet in self.id))
        return "pkcs11:" + ";".join([*parts, "type=private"])

    @classmethod
    def from_uri(cls, reference: str) -> TokenKeySelector:
        """The selector a CA row's key_reference names; anything malformed is a
        KeyStoreError (an odd reference must fail /health/'s check, never crash it)."""
        invalid = KeyStoreError(f"Invalid PKCS#11 key reference {reference!r}.")
        # RFC 7512 URIs are ASCII: a label's other characters come percent-encoded.
        if not reference.startswith("pkcs11:") or not reference.isascii():
            raise invalid
        try:
            fields: dict[str, str] = {}
            for part in reference[len("pkcs11:") :].split(";"):
                name, _, value = part.partition("=")
                fields[name] = value
            return cls(
                label=unquote(fields.get("object", ""), errors="strict"),
                id=unquote_to_bytes(fields.get("id", "")),
            )
        except KeyStoreError:
            raise
        except Exception:  # noqa: BLE001 - a bad escape, bad UTF-8: all the same to us
            raise invalid from None

    def describe(self) -> str:
        named = []
        if self.label:
            named.append(f"label {self.label!r}")
        if self.id:
            named.append(f"id {self.id.hex()}")
        return " and ".join(named)


def selector_for(*, label: str = "", key_id: str = "") -> TokenKeySelector:
    """The selector an operator gives on the command line (id in hex, as pkcs11-tool)."""
    try:
        raw_id = bytes.fromhex(key_id) if key_id else b""
    except ValueError:
        raise KeyStoreError(f"The key id {key_id!r} is not hexadecimal.") from None
    return TokenKeySelector(label=label.strip(), id=raw_id)


# --- the process's library and session -------------------------------------------------


@dataclass
class _Process:
    pid: int
    settings: tuple[str, str, str]
    lib: Any
    session: Any
    keys: dict[str, Any]  # reference -> the private key object in this session
    wrapped: dict[str, PrivateKey]  # reference -> what cryptography signs with


_LOCK = threading.RLock()
_STATE: _Process | None = None
# This process's library object per module path: initialised once per process.
_LIBRARIES: dict[tuple[int, str], Any] = {}
# A parent's library objects and session, inherited by a forked child: kept referenced so
# the child never finalises the library (python-pkcs11 does on garbage collection) or
# closes a session through them; and reused when the module did not reset on fork.
_INHERITED: list[_Process] = []
_INHERITED_LIBRARIES: dict[str, Any] = {}

# How long a call waits for the lock while another thread is in the library. A signature
# takes milliseconds; a wait this long means the HSM (or the network to it) hangs.
SIGN_WAIT_SECONDS = 15.0
# /health/ must answer a monitoring probe within its own timeout.
HEALTH_WAIT_SECONDS = 3.0
_WAIT: ContextVar[float | None] = ContextVar("pkcs11_wait", default=None)


@contextlib.contextmanager
def waiting_at_most(seconds: float) -> Iterator[None]:
    """Calls into the token within this block wait at most ``seconds`` for the lock."""
    token = _WAIT.set(seconds)
    try:
        yield
    finally:
        _WAIT.reset(token)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    lock, wait = _LOCK, _WAIT.get() or SIGN_WAIT_SECONDS
    if not lock.acquire(timeout=wait):
        raise KeyStoreError(
            f"The HSM is busy: another call into it has not returned for {wait:g} s. Is the "
            "HSM, or the network to it, down? (Its PKCS#11 client's own timeouts end a hung "
            "call.)"
        )
    try:
        yield
    finally:
        lock.release()


def _after_fork_in_child() -> None:
    """A new lock (a thread that held the parent's does not exist here, and would hold it
    for ever), and none of the parent's state: the child opens its own session."""
    global _LOCK, _STATE
    _LOCK = threading.RLock()
    if _STATE is not None:
        _INHERITED.append(_STATE)
        _STATE = None
    for (_pid, module), lib in _LIBRARIES.items():
        _INHERITED_LIBRARIES[module] = lib
    _LIBRARIES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _configured() -> tuple[str, str, str]:
    module = settings.PKIPORTAL_PKCS11_MODULE
    label = settings.PKIPORTAL_PKCS11_TOKEN_LABEL
    serial = settings.PKIPORTAL_PKCS11_TOKEN_SERIAL
    if not module:
        raise KeyStoreError(
            "No PKCS#11 module is configured: set PKIPORTAL_PKCS11_MODULE to the HSM "
            "vendor's library (e.g. /usr/lib/softhsm/libsofthsm2.so)."
        )
    if not label and not serial:
        raise KeyStoreError(
            "Name the HSM token: set PKIPORTAL_PKCS11_TOKEN_LABEL or PKIPORTAL_PKCS11_TOKEN_SERIAL."
        )
    return module, label, serial


def _token_name(label: str, serial: str) -> str:
    return f"label {label!r}" if label else f"serial {serial!r}"


@sensitive_variables("pin")
def _pin() -> str:
    pin = settings.PKIPORTAL_PKCS11_PIN
    if not pin:
        raise KeyStoreError(
            "No HSM user PIN is configured: set PKIPORTAL_PKCS11_PIN_FILE "
            "(or PKIPORTAL_PKCS11_PIN)."
        )
    return pin


def _load_library(module: str, inherited: _Process | None) -> Any:
    """The module, initialised in this process (C_Initialize), once per process."""
    pkcs11 = _library()
    from pkcs11 import _pkcs11  # pkcs11.lib() keeps one object per path, across forks too

    loaded = _LIBRARIES.get((os.getpid(), module))
    if loaded is not None:
        return loaded
    try:
        loaded = _pkcs11.lib(module)
    except pkcs11.PKCS11Error as exc:
        # CKR_CRYPTOKI_ALREADY_INITIALIZED, which python-pkcs11 reports by message only.
        # The module does not reset on fork: its state, copied with the process, is ours,
        # through the library object the parent initialised it with (even if the parent
        # had closed its session before forking).
        parent = _INHERITED_LIBRARIES.get(module) or (inherited.lib if inherited else None)
        if "already initialized" not in str(exc) or parent is None:
            raise KeyStoreError(
                f"The PKCS#11 module {module} cannot be loaded: {_say(exc)}"
            ) from None
        loaded = parent
    _LIBRARIES[(os.getpid(), module)] = loaded
    return loaded


@sensitive_variables("pin")
def _open(config: tuple[str, str, str], inherited: _Process | None) -> _Process:
    pkcs11 = _library()
    module, label, serial = config
    if not os.path.isfile(module):
        raise KeyStoreError(f"The PKCS#11 module {module} does not exist.")
    lib = _load_library(module, inherited)
    where = _token_name(label, serial)
    try:
        token = lib.get_token(
            **({"token_label": label} if label else {}),
            **({"token_serial": serial.encode()} if serial else {}),
        )
    except pkcs11.NoSuchToken:
        raise KeyStoreError(f"No HSM token with {where} is present.") from None
    except pkcs11.MultipleTokensReturned:
        raise KeyStoreError(
            f"More than one HSM token has {where}: set PKIPORTAL_PKCS11_TOKEN_SERIAL."
        ) from None
    except pkcs11.PKCS11Error as exc:
        raise KeyStoreError(f"The HSM token with {where} cannot be reached: {_say(exc)}") from None
    pin = _pin()
    try:
        try:
            session = token.open(rw=True, user_pin=pin)
        except pkcs11.UserAlreadyLoggedIn:
            # Login is per process, not per session: a session of ours is still logged in.
            session = token.open(rw=True)
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
        raise KeyStoreError(
            f"The HSM token with {where} refused the user PIN (wrong PIN): check "
            "PKIPORTAL_PKCS11_PIN_FILE. Repeated failures lock the token."
        ) from None
    except pkcs11.PinLocked:
        raise KeyStoreError(f"The user PIN of the HSM token with {where} is locked.") from None
    except pkcs11.PKCS11Error as exc:
        raise KeyStoreError(f"Cannot log in to the HSM token with {where}: {_say(exc)}") from None
    return _Process(os.getpid(), config, lib, session, {}, {})


def _state() -> _Process:
    """This process's logged-in session, opened on first use (after any fork)."""
    global _STATE
    config = _configured()
    state = _STATE
    if state is not None and state.pid == os.getpid() and state.settings == config:
        return state
    inherited = None
    if state is not None:
        if state.pid != os.getpid():
            _INHERITED.append(state)
            inherited = state
        else:  # the settings changed (tests, a reconfigured shell)
            _close(state)
        _STATE = None
    _STATE = _open(config, inherited)
    return _STATE


def _close(state: _Process) -> None:
    with contextlib.suppress(Exception):  # the session may be what is gone
        state.session.close()


def _session_lost(exc: Exception) -> bool:
    pkcs11 = _library()
    return isinstance(
        exc,
        pkcs11.SessionClosed
        | pkcs11.SessionHandleInvalid
        | pkcs11.UserNotLoggedIn
        | pkcs11.ObjectHandleInvalid
        | pkcs11.KeyHandleInvalid
        | pkcs11.DeviceRemoved
        | pkcs11.TokenNotPresent,
    )


def _with_session(operation: Callable[[_Process], _T]) -> _T:
    """Run ``operation`` on this process's session; once more on a fresh one if lost."""
    global _STATE
    pkcs11 = _library()
    with _locked():
        state = _state()
        try:
            return operation(state)
        except pkcs11.PKCS11Error as exc:
            if not _session_lost(exc):
                raise
            _close(state)
            _STATE = None
        state = _state()
        return operation(state)


def _say(exc: BaseException) -> str:
    """A PKCS#11 error by its CKR name; python-pkcs11's messages are often empty."""
    text = str(exc).strip()
    return f"{type(exc).__name__}" + (f" ({text})" if text else "")


def forget_process_state() -> None:
    """Log out and close this process's session (tests; a token being re-initialised)."""
    global _STATE
    with _locked():
        if _STATE is not None and _STATE.pid == os.getpid():
            _close(_STATE)
        _STATE = None


# --- finding keys ---------------------------------------------------------------------


def _find(state: _Process, selector: TokenKeySelector) -> Any:
    pkcs11 = _library()
    attrs: dict[Any, Any] = {pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}
    if selector.label:
        attrs[pkcs11.Attribute.LABEL] = selector.label
    if selector.id:
        attrs[pkcs11.Attribute.ID] = selector.id
    found = list(state.session.get_objects(attrs))
    if not found:
        raise KeyStoreError(
            f"The HSM token has no private key with {selector.describe()} (was it deleted, "
            "or is PKIPORTAL_PKCS11_TOKEN_LABEL the wrong token?)."
        )
    if len(found) > 1:
        raise KeyStoreError(
            f"The HSM token has {len(found)} private keys with {selector.describe()}: "
            "name the key by its id as well."
        )
    return found[0]


def _public_key(state: _Process, private: Any) -> keys.PublicKey:
    """The key's public half from the token: RSA from the private object where the token
    keeps the modulus and exponent there (not every token does), else, and always for EC,
    from the public key object with the same id (or label), as pkcs11-tool and we make it."""
    pkcs11 = _library()
    attribute = pkcs11.Attribute
    key_type = private[attribute.KEY_TYPE]
    if key_type == pkcs11.KeyType.RSA:
        modulus = _attribute(private, attribute.MODULUS)
        exponent = _attribute(private, attribute.PUBLIC_EXPONENT)
        if not modulus or not exponent:
            public = _public_object(state, private, "RSA")
            modulus = _attribute(public, attribute.MODULUS)
            exponent = _attribute(public, attribute.PUBLIC_EXPONENT)
        try:
            return rsa.RSAPublicNumbers(
                int.from_bytes(bytes(exponent or b""), "big"),
                int.from_bytes(bytes(modulus or b""), "big"),
            ).public_key()
        except ValueError:
            raise KeyStoreError("The RSA public key in the HSM cannot be read.") from None
    if key_type != pkcs11.KeyType.EC:
        raise KeyStoreError("The key in the HSM is neither RSA nor EC.")
    public = _public_object(state, private, "EC")
    params = bytes(public[attribute.EC_PARAMS])
    curve_type = _CURVES.get(params)
    if curve_type is None:
        raise KeyStoreError("The EC key in the HSM is not on P-256, P-384 or P-521.")
    curve = curve_type()
    point = bytes(public[attribute.EC_POINT])
    raw_length = 1 + 2 * ((curve.key_size + 7) // 8)
    if len(point) != raw_length:  # PKCS#11 wraps the point in a DER OCTET STRING
        point = point[-raw_length:]
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise KeyStoreError("The EC public key in the HSM cannot be read.") from None


def _public_object(state: _Process, private: Any, kind: str) -> Any:
    """The public key object beside a private key: same CKA_ID, or same label without one."""
    pkcs11 = _library()
    attribute = pkcs11.Attribute
    match: dict[Any, Any] = {attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY}
    key_id = _attribute(private, attribute.ID)
    label = _attribute(private, attribute.LABEL)
    if key_id:
        match[attribute.ID] = key_id
    elif label:
        match[attribute.LABEL] = label
    publics = list(state.session.get_objects(match))
    if len(publics) != 1:
        raise KeyStoreError(
            f"The HSM token holds no single public key object beside this {kind} private key "
            "(same id): import the public key into the token, e.g. with pkcs11-tool "
            "--write-object ... --type pubkey."
        )
    return publics[0]


def _attribute(obj: Any, name: Any) -> Any:
    try:
        return obj[name]
    except Exception:  # noqa: BLE001 - absent, or refused by the token
        return None


YES, NO, UNKNOWN = "yes", "no", "unknown"


def _flag(obj: Any, name: Any) -> str:
    """A boolean attribute as the token states it; "unknown" when it will not say, which
    is never taken for the safe answer."""
    value = _attribute(obj, name)
    if value is None:
        return UNKNOWN
    return YES if value else NO


@dataclass(frozen=True)
class KeyFacts:
    """What the token says of a CA key: shown by the commands, recorded in the ca.create
    audit event. Each flag is "yes", "no" or "unknown" (the token would not say)."""

    reference: str
    label: str
    id: str
    private: str  # CKA_PRIVATE: the token uses it only after login
    sensitive: str  # CKA_SENSITIVE: its value cannot be read out
    always_sensitive: str  # CKA_ALWAYS_SENSITIVE: and never could be
    extractable: str  # CKA_EXTRACTABLE: it can be wrapped out
    never_extractable: str  # CKA_NEVER_EXTRACTABLE: and never could be
    local: str  # CKA_LOCAL: generated in the token, not imported

    def refusals(self) -> list[str]:
        """Why the portal never signs with this key."""
        reasons = []
        if self.private != YES:
            reasons.append(
                f"it is not private (CKA_PRIVATE {self.private}): it signs for anyone who "
                "reaches the token, without the user PIN"
            )
        if self.sensitive != YES:
            reasons.append(
                f"it is not sensitive (CKA_SENSITIVE {self.sensitive}): its value can be read "
                "out of the token"
            )
        return reasons

    def export_risks(self) -> list[str]:
        """Why the key may exist outside the token: refused unless the operator allows it."""
        risks = []
        if self.extractable != NO:
            risks.append(f"it can be wrapped out of the token (CKA_EXTRACTABLE {self.extractable})")
        if self.never_extractable != YES:
            risks.append(
                "it may have been wrapped out before (CKA_NEVER_EXTRACTABLE "
                f"{self.never_extractable})"
            )
        if self.always_sensitive != YES:
            risks.append(
                f"its value may have been read before it was made sensitive "
                f"(CKA_ALWAYS_SENSITIVE {self.always_sensitive})"
            )
        return risks

    def summary(self) -> str:
        origin = {YES: "generated in the token", NO: "imported"}.get(self.local, "origin unknown")
        if self.extractable == NO and self.never_extractable == YES:
            extract = "never extractable"
        elif self.extractable == YES:
            extract = "EXTRACTABLE"
        elif self.extractable == NO:
            extract = "not extractable now (but may have been before)"
        else:
            extract = "extractability unknown"
        login = {YES: "signs after login only", NO: "signs WITHOUT login"}.get(
            self.private, "login unknown"
        )
        return f"label {self.label!r}, id {self.id or '-'}: {origin}, {extract}, {login}"

    def as_dict(self) -> dict[str, str]:
        """For the audit event's detail."""
        return {
            "label": self.label,
            "id": self.id,
            "private": self.private,
            "sensitive": self.sensitive,
            "always_sensitive": self.always_sensitive,
            "extractable": self.extractable,
            "never_extractable": self.never_extractable,
            "local": self.local,
        }


def _facts(reference: str, private: Any) -> KeyFacts:
    pkcs11 = _library()
    attribute = pkcs11.Attribute
    key_id = _attribute(private, attribute.ID) or b""
    return KeyFacts(
        reference=reference,
        label=_attribute(private, attribute.LABEL) or "",
        id=bytes(key_id).hex(),
        private=_flag(private, attribute.PRIVATE),
        sensitive=_flag(private, attribute.SENSITIVE),
        always_sensitive=_flag(private, attribute.ALWAYS_SENSITIVE),
        extractable=_flag(private, attribute.EXTRACTABLE),
        never_extractable=_flag(private, attribute.NEVER_EXTRACTABLE),
        local=_flag(private, attribute.LOCAL),
    )


def _signing_key(state: _Process, reference: str) -> Any:
    private = state.keys.get(reference)
    if private is None:
        private = _find(state, TokenKeySelector.from_uri(reference))
        state.keys[reference] = private
    return private


# --- keys as cryptography sees them -------------------------------------------------------


# The hashes a CA signs with (S/MIME BR 7.1.3.2), by exact type: never SHA-1, and
# nothing the DigestInfo table above does not name.
_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def _allowed_hash(algorithm: object) -> hashes.HashAlgorithm:
    if type(algorithm) not in _HASHES:
        name = getattr(algorithm, "name", type(algorithm).__name__)
        raise KeyStoreError(
            f"A CA key in the HSM signs with SHA-256, SHA-384 or SHA-512 only, not {name}."
        )
    assert isinstance(algorithm, hashes.HashAlgorithm)
    return algorithm


def _digest(data: bytes, algorithm: object) -> tuple[bytes, hashes.HashAlgorithm]:
    if isinstance(algorithm, utils.Prehashed):
        # Prehashed keeps its hash private (no public accessor): read it, or refuse. A
        # digest's length does not name its hash (SHA3-256 is as long as SHA-256).
        chosen = _allowed_hash(getattr(algorithm, "_algorithm", None))
        if len(data) != chosen.digest_size:
            raise KeyStoreError("The digest to sign has the wrong size.")
        return data, chosen
    chosen = _allowed_hash(algorithm)
    hasher = hashes.Hash(chosen)
    hasher.update(data)
    return hasher.finalize(), chosen


class TokenSignatureInvalid(KeyStoreError):
    """The token's signature does not verify with the key's public key: another key sits
    under the reference, or the HSM is faulty. Nothing it signed may leave."""

    default_message = (
        "The key in the HSM does not belong to this CA's certificate: its signature does "
        "not verify with the CA's public key (another key, or a faulty HSM)."
    )


def _token_sign(reference: str, payload: bytes, mechanism: str) -> bytes:
    pkcs11 = _library()

    def sign(state: _Process) -> bytes:
        return bytes(
            _signing_key(state, reference).sign(payload, mechanism=pkcs11.Mechanism[mechanism])
        )

    try:
        return _with_session(sign)
    except pkcs11.PKCS11Error as exc:
        raise KeyStoreError(f"The HSM refused to sign: {_say(exc)}") from None


def _no_export() -> NoReturn:
    raise KeyStoreError("This CA key lives in an HSM: it cannot be exported or used so.")


class TokenEcKey(ec.EllipticCurvePrivateKey):
    """An EC CA key in the token: ECDSA over a digest taken on the host."""

    def __init__(self, reference: str, public_key: ec.EllipticCurvePublicKey) -> None:
        self._reference = reference
        self._public_key = public_key

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise KeyStoreError("An EC key in the HSM signs ECDSA only.")
        digest, chosen = _digest(bytes(data), signature_algorithm.algorithm)
        raw = _token_sign(self._reference, digest, "ECDSA")
        half = len(raw) // 2  # PKCS#11 gives r || s; X.509 wants Ecdsa-Sig-Value
        signature = utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
        # Checked before anything carries it: ~0.1 ms against a token's round trip.
        try:
            self._public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(chosen)))
        except InvalidSignature:
            raise TokenSignatureInvalid() from None
        return signature

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _no_export()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _no_export()

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _no_export()

    def __copy__(self) -> TokenEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenEcKey:
        return self

    def __repr__(self) -> str:
        return f"TokenEcKey({self._reference!r})"


class TokenRsaKey(rsa.RSAPrivateKey):
    """An RSA CA key in the token: PKCS#1 v1.5 over a DigestInfo made on the host."""

    def __init__(self, reference: str, public_key: rsa.RSAPublicKey) -> None:
        self._reference = reference
        self._public_key = public_key

    def sign(
        self,
        data: Buffer,
        padding_: padding.AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        if not isinstance(padding_, padding.PKCS1v15):
            raise KeyStoreError("An RSA CA key in the HSM signs PKCS#1 v1.5 only.")
        digest, chosen = _digest(bytes(data), algorithm)
        signature = _token_sign(self._reference, _DIGEST_INFO[chosen.name] + digest, "RSA_PKCS")
        try:  # as TokenEcKey.sign: no signature leaves unchecked
            self._public_key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(chosen))
        except InvalidSignature:
            raise TokenSignatureInvalid() from None
        return signature

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        _no_export()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _no_export()

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _no_export()

    def __copy__(self) -> TokenRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenRsaKey:
        return self

    def __repr__(self) -> str:
        return f"TokenRsaKey({self._reference!r})"


def _wrap(reference: str, public_key: keys.PublicKey) -> keys.PrivateKey:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return TokenEcKey(reference, public_key)
    return TokenRsaKey(reference, public_key)


# --- the backend -------------------------------------------------------------------------


# Keys this process generated for a CA row not yet committed: only these are ever
# destroyed (a failed create_pki); a key the operator made is never touched.
_GENERATED: set[str] = set()


class Pkcs11KeyBackend:
    """Online CA keys in the token that PKIPORTAL_PKCS11_* name."""

    name = NAME

    def load(self, reference: str) -> keys.PrivateKey:
        def load(state: _Process) -> keys.PrivateKey:
            wrapped = state.wrapped.get(reference)
            if wrapped is None:
                wrapped = _wrap(reference, _public_key(state, _signing_key(state, reference)))
                state.wrapped[reference] = wrapped
            return wrapped

        return self._call(load)

    def generate(self, *, label: str, algorithm: keys.KeyAlgorithm) -> tuple[str, keys.PrivateKey]:
        """A new key pair in the token: private, sensitive, never extractable, sign only."""
        pkcs11 = _library()
        attribute = pkcs11.Attribute
        token_label = LABEL_PREFIX + label
        key_id = secrets.token_bytes(16)
        reference = TokenKeySelector(label=token_label, id=key_id).uri()

        def generate(state: _Process) -> keys.PrivateKey:
            taken = list(
                state.session.get_objects(
                    {attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY, attribute.LABEL: token_label}
                )
            )
            if taken:
                raise KeyStoreError(
                    f"The HSM token already holds a key labelled {token_label!r}: use it "
                    "with --hsm-key-label, or give the new CA another slug."
                )
            private_template = {
                attribute.TOKEN: True,
                attribute.PRIVATE: True,
                attribute.SENSITIVE: True,
                attribute.EXTRACTABLE: False,
                attribute.SIGN: True,
                attribute.DECRYPT: False,
                attribute.UNWRAP: False,
                attribute.DERIVE: False,
                attribute.LABEL: token_label,
                attribute.ID: key_id,
            }
            public_template = {
                attribute.TOKEN: True,
                attribute.PRIVATE: False,
                attribute.VERIFY: True,
                attribute.ENCRYPT: False,
                attribute.WRAP: False,
                attribute.LABEL: token_label,
                attribute.ID: key_id,
            }
            session = state.session
            options = {
                "id": key_id,
                "label": token_label,
                "store": True,
                "capabilities": pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY,
                "public_template": public_template,
                "private_template": private_template,
            }
            size = algorithm.rsa_key_size
            if size is not None:
                public_template[attribute.PUBLIC_EXPONENT] = keys.RSA_PUBLIC_EXPONENT.to_bytes(
                    3, "big"
                )
                session.generate_keypair(pkcs11.KeyType.RSA, size, **options)
            else:
                curve = algorithm.curve
                assert curve is not None
                oid = next(der for der, kind in _CURVES.items() if isinstance(curve, kind))
                parameters = session.create_domain_parameters(
                    pkcs11.KeyType.EC, {attribute.EC_PARAMS: oid}, local=True
                )
                parameters.generate_keypair(**options)
            _GENERATED.add(reference)
            return _wrap(reference, _public_key(state, _signing_key(state, reference)))

        return reference, self._call(generate, doing="generate a key in")

    def adopt(
        self, selector: TokenKeySelector, *, allow_extractable: bool = False
    ) -> tuple[str, keys.PrivateKey]:
        """An existing key the operator made in the token: it must sign, be private and
        sensitive, and (unless ``allow_extractable``) never have been able to leave."""
        pkcs11 = _library()
        attribute = pkcs11.Attribute

        def adopt(state: _Process) -> tuple[str, keys.PrivateKey]:
            private = _find(state, selector)
            named = f"The HSM key with {selector.describe()}"
            if _flag(private, attribute.SIGN) != YES:
                raise KeyStoreError(f"{named} may not sign (CKA_SIGN).")
            label = _attribute(private, attribute.LABEL) or ""
            key_id = bytes(_attribute(private, attribute.ID) or b"")
            reference = TokenKeySelector(label=label, id=key_id).uri()
            facts = _facts(reference, private)
            refusals = facts.refusals()
            if refusals:
                raise KeyStoreError(f"{named} is refused: {'; '.join(refusals)}. Make a new one.")
            risks = facts.export_risks()
            if risks and not allow_extractable:
                raise KeyStoreError(
                    f"{named} is refused: {'; '.join(risks)}. Let the portal generate the key, "
                    "or make one with CKA_EXTRACTABLE false and CKA_SENSITIVE true from the "
                    "start; --allow-extractable-key accepts it if your HSM's backup works by "
                    "wrapping keys out."
                )
            return reference, _wrap(reference, _public_key(state, private))

        return self._call(adopt)

    def facts(self, reference: str) -> KeyFacts:
        return self._call(lambda state: _facts(reference, _signing_key(state, reference)))

    def discard(self, reference: str) -> None:
        """Destroy a key this process generated for a CA that was never created."""
        if reference not in _GENERATED:
            return
        pkcs11 = _library()
        selector = TokenKeySelector.from_uri(reference)

        def destroy(state: _Process) -> None:
            for cls in (pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.ObjectClass.PUBLIC_KEY):
                attrs = {pkcs11.Attribute.CLASS: cls, pkcs11.Attribute.ID: selector.id}
                for obj in list(state.session.get_objects(attrs)):
                    obj.destroy()
            state.keys.pop(reference, None)
            state.wrapped.pop(reference, None)

        self._call(destroy, doing="remove a key from")
        _GENERATED.discard(reference)

    def _call(self, operation: Callable[[_Process], _T], doing: str = "use") -> _T:
        pkcs11 = _library()
        try:
            return _with_session(operation)
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(f"Cannot {doing} the HSM token: {_say(exc)}") from None


def check_pair(key: keys.PrivateKey, public_key: object) -> None:
    """Sign a challenge in the token and verify it with the certificate's public key:
    proves the token's key is the certificate's, whatever public object sits beside it.
    ``public_key`` is whatever the certificate holds: a key of another type fails."""
    challenge = secrets.token_bytes(32)
    try:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise TokenSignatureInvalid()
            algorithm = ec.ECDSA(keys.signature_hash_for(key))
            public_key.verify(key.sign(challenge, algorithm), challenge, algorithm)
        else:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise TokenSignatureInvalid()
            digest = keys.signature_hash_for(key)
            public_key.verify(
                key.sign(challenge, padding.PKCS1v15(), digest),
                challenge,
                padding.PKCS1v15(),
                digest,
            )
    except InvalidSignature:
        raise TokenSignatureInvalid() from None
