"""OPE keys for the ``ope`` method: load, generate, fingerprint. Never log the key itself.

Resolution order (first that applies):

1. ``key_file`` given and present: its stripped contents are the key;
2. ``key_file`` given but absent: a fresh key is generated and saved there (mode 0600);
3. environment variable ``ANONYMIZE_OPE_KEY``: its value is the key;
4. otherwise the default key file ``$ANONYMIZE_HOME/keys/ope.key`` (``ANONYMIZE_HOME``
   defaults to ``~/.anonymize``) is read, or created (mode 0600) on first use, so
   that a whole dataset is warped with one key, as the paper's training setting needs.

A key is the ASCII text that pyope's ``OPE.generate_key()`` returns (base64 of 32
random bytes), used as bytes, exactly like the paper's published key
:data:`PAPER_KEY`. Only :attr:`OpeKey.fingerprint` (a short SHA-256) may appear in
records and logs.

Example:
    >>> import tempfile, os, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> k = load_key(d / "k.key")
    >>> oct(os.stat(d / "k.key").st_mode & 0o777), k.source, len(k.fingerprint)
    ('0o600', 'generated', 16)
    >>> load_key(d / "k.key").fingerprint == k.fingerprint
    True
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import UsageError

ENV_KEY = "ANONYMIZE_OPE_KEY"
ENV_HOME = "ANONYMIZE_HOME"

#: The key printed in paper 001 (Ko et al., IEEE Access 2020). Public: reproduction only.
PAPER_KEY = b"jX4ZXXmM3qTgAjez/1j/EVz5tCcmQ711bz8hqIMJap0="


@dataclass(frozen=True)
class OpeKey:
    """A loaded key. ``repr`` never shows the secret."""

    secret: bytes = field(repr=False)
    source: str  # "file" | "generated" | "env" | "default-file" | "default-generated" | "paper"
    path: Path | None = None

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256(key): safe to record, identifies the key."""
        return hashlib.sha256(self.secret).hexdigest()[:16]


def generate_key_text() -> bytes:
    """A new random key in pyope's format (base64 of 32 bytes from ``secrets``)."""
    return base64.b64encode(secrets.token_bytes(32))


def _write_new_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_key_text()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key + b"\n")
    finally:
        os.close(fd)
    os.chmod(path, 0o600)  # umask may have removed bits, never added; make it exact
    return key


def _read_key(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"cannot read OPE key file {path}: {exc.strerror}") from None
    if not data:
        raise UsageError(f"OPE key file {path} is empty")
    return data


def default_key_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = Path(env.get(ENV_HOME) or Path.home() / ".anonymize").expanduser()
    return home / "keys" / "ope.key"


def load_key(key_file: str | Path | None = None, env: Mapping[str, str] | None = None, paper: bool = False) -> OpeKey:
    """Resolve the key as described in the module docstring (``paper=True``: the published key)."""
    env = os.environ if env is None else env
    if paper:
        return OpeKey(PAPER_KEY, "paper")
    if key_file is not None and str(key_file) != "":
        path = Path(key_file).expanduser()
        if path.exists():
            return OpeKey(_read_key(path), "file", path)
        return OpeKey(_write_new_key(path), "generated", path)
    if env.get(ENV_KEY):
        return OpeKey(env[ENV_KEY].strip().encode("utf-8"), "env")
    path = default_key_path(env)
    if path.exists():
        return OpeKey(_read_key(path), "default-file", path)
    return OpeKey(_write_new_key(path), "default-generated", path)
