"""The plain secrets of a task config, sealed for the state database.

Secrets are write-only: the API accepts them and never returns them, and the
database holds only a Fernet token (AES-128-CBC + HMAC-SHA256) made with
``HYDRA_SCHEDULER_SECRET_KEY``, so a dump or backup of the database leaks
nothing without the key. What is sealed is the mapping that
``TaskConfig.split_secrets()`` takes out of a config (path -> plain value);
environment references (``{"env": "VAR"}``) are no secret and stay in the
public part. With no key configured, a config with a plain secret is refused
rather than stored in clear: only references are possible then.

The key setting may list several keys (comma-separated): the first encrypts,
every one decrypts, so keys can be rotated without re-entering every secret.
No message or ``repr`` here ever holds a secret or a key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from crawlers.config import HydraConfig

KEY_SETTING = "HYDRA_SCHEDULER_SECRET_KEY"


class SecretsError(ValueError):
    """Secrets cannot be sealed or opened as configured; says why and what to set."""


def generate_key() -> str:
    """A new key for ``HYDRA_SCHEDULER_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Seals and opens a task config's secrets with the configured key(s)."""

    __slots__ = ("_fernet",)

    def __init__(self, key: str = "") -> None:
        keys = [part.strip() for part in key.split(",") if part.strip()]
        try:
            fernets = [Fernet(part.encode("ascii")) for part in keys]
        except (ValueError, UnicodeEncodeError):
            raise SecretsError(
                f"{KEY_SETTING} is not a list of Fernet keys (each 32 url-safe base64-encoded "
                "bytes; make one with `python -c 'from crawlers.services.scheduler.secrets "
                "import generate_key; print(generate_key())'`)"
            ) from None
        self._fernet = MultiFernet(fernets) if fernets else None

    @classmethod
    def from_config(cls, config: HydraConfig) -> SecretBox:
        return cls(config.scheduler_secret_key)

    def __repr__(self) -> str:
        return f"SecretBox(key={'***' if self.can_encrypt else 'none'})"

    @property
    def can_encrypt(self) -> bool:
        return self._fernet is not None

    def seal(self, secrets: Mapping[str, str]) -> str | None:
        """What ``task_configs.secrets_encrypted`` holds for these secrets: a Fernet
        token, or None for none. Without a key any secret is refused."""
        if not secrets:
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items()):
            raise SecretsError("secrets are paths and string values")
        if self._fernet is None:
            raise SecretsError(
                f"refusing to store the plain secret(s) {', '.join(sorted(secrets))} "
                f"unencrypted: set {KEY_SETTING} to a Fernet key, or give each as an "
                'environment reference ({"env": "VAR"})'
            )
        document = json.dumps(dict(secrets), sort_keys=True, separators=(",", ":"))
        return self._fernet.encrypt(document.encode("utf-8")).decode("ascii")

    def unseal(self, sealed: str | None) -> dict[str, str]:
        """The secrets :meth:`seal` was given (``{}`` for None)."""
        if not sealed:
            return {}
        if self._fernet is None:
            raise SecretsError(f"these secrets are encrypted and {KEY_SETTING} is not set")
        try:
            document = self._fernet.decrypt(sealed.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise SecretsError(
                f"cannot decrypt these secrets: {KEY_SETTING} holds none of the keys they "
                "were encrypted with (keep the old key after the new one to rotate), or "
                "the stored token is damaged"
            ) from None
        try:
            loaded = json.loads(document)
        except ValueError:
            raise SecretsError("the decrypted secrets are not readable JSON") from None
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise SecretsError("the decrypted secrets are not a mapping of paths to strings")
        return {str(k): str(v) for k, v in loaded.items()}
