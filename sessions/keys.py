"""SSH key handling: validating public keys, generating Ed25519 pairs, encrypting private keys.

Generated private keys are encrypted with Fernet keys from ``SHOPPER_FERNET_KEYS`` (separate
from SECRET_KEY; several keys, newest first, so they can be rotated with MultiFernet).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

ALLOWED_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
MAX_KEY_LENGTH = 16_000


def public_key_normalize(text: str) -> str:
    """One valid OpenSSH public key line (type, base64, optional comment), or ValidationError."""
    line = " ".join((text or "").split())
    if not line:
        raise ValidationError("The SSH public key is empty.", code="invalid_key")
    if len(line) > MAX_KEY_LENGTH or "\n" in (text or "").strip():
        raise ValidationError("Give exactly one SSH public key (one line).", code="invalid_key")
    parts = line.split(" ")
    if parts[0] not in ALLOWED_KEY_TYPES:
        raise ValidationError(
            f"Unsupported SSH key type {parts[0][:30]!r}: use one of {', '.join(ALLOWED_KEY_TYPES)}.",
            code="invalid_key",
        )
    try:
        key = serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
    except (ValueError, TypeError, IndexError):
        raise ValidationError(
            "That is not a valid SSH public key (bad base64 or key data).", code="invalid_key"
        ) from None
    if hasattr(key, "key_size") and parts[0] == "ssh-rsa" and key.key_size < 2048:
        raise ValidationError("RSA keys must be at least 2048 bits.", code="invalid_key")
    return line


def public_key_fingerprint(line: str) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def keypair_generate(comment: str) -> tuple[str, str]:
    """A new Ed25519 pair: (OpenSSH public key line, OpenSSH private key PEM)."""
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{public.decode()} {comment}", pem


def _fernet() -> MultiFernet:
    keys = [k for k in settings.SHOPPER_FERNET_KEYS if k]
    if not keys:
        raise ImproperlyConfigured("SHOPPER_FERNET_KEYS is not set: generated SSH keys cannot be stored.")
    return MultiFernet([Fernet(k.encode()) for k in keys])


def secret_encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured("A stored secret cannot be decrypted with SHOPPER_FERNET_KEYS.") from None


def secret_rotate(token: str) -> str:
    """Re-encrypt with the newest key (MultiFernet.rotate)."""
    return _fernet().rotate(token.encode()).decode()
