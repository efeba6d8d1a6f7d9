"""Keys of the ``hash`` masking strategy: the proxy's own, and those policies name.

The proxy's own key comes from ``--hash-key-file`` (a random key per process
without it, so pseudonyms change on restart). A DatabaseAccessPolicy may name
a Secret key instead (``spec.masking.hashKeySecretRef: {name, key}``, the
Secret in the policy's namespace): the operator mounts that Secret into the
sidecar container only, and the proxy reads the key from
``DIR/NAMESPACE/NAME/KEY``, ``DIR`` being ``--hash-key-dir``. Only the
reference travels in a bundle; the key is never logged, audited or counted
(a key's fingerprint, :func:`fingerprint`, is logged when it is loaded, so
replicas with different keys can be told apart).

A subject's pseudonyms use the key its policies name (see
:attr:`~steward_proxy.masking.plan.MaskingConfig.hash_keys`). When that key
cannot be read (the Secret is missing, the file is empty or shorter than
:data:`MIN_KEY_BYTES`), or the policies that cover the subject name different
keys, its masking is *unavailable*: there are no strategies to hash with, its
sign-ins are refused with the reason, and the masker refuses every statement,
so a pseudonym is never made with a key other than the one named. A key read
is kept for the life of the process, so pseudonyms stay stable; a key that
could not be read is tried again at the next sign-in and by :meth:`HashKeys.retry`.

Policy and Secret names are validated by the compiler (DNS names, Secret
key characters), so messages carry them as they are. Reads small local
files; no sockets.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from typing import TYPE_CHECKING

from steward_proxy.masking.strategies import Strategies

if TYPE_CHECKING:  # light at import: ``steward proxy --help`` shows the default directory
    from steward_proxy.masking.plan import MaskingConfig
    from steward_proxy.policy.model import HashKeySecretRef, PolicySet

__all__ = [
    "DEFAULT_HASH_KEY_DIR",
    "MAX_KEY_BYTES",
    "MIN_KEY_BYTES",
    "HashKeyError",
    "HashKeys",
    "fingerprint",
    "read_key",
]

log = logging.getLogger("steward.proxy")

DEFAULT_HASH_KEY_DIR = "/etc/steward/hash-keys"
"""Where the operator mounts the Secret a policy names (``DIR/NAMESPACE/NAME/KEY``)."""
MAX_KEY_BYTES = 65536
"""A key file larger than this is refused (a path mistaken for a key file)."""
MIN_KEY_BYTES = 16
"""A shorter key is refused: it could be guessed, and with it every pseudonym reversed."""


class HashKeyError(Exception):
    """A key file that cannot be used; the message names the file, never its content."""


def read_key(path: str) -> bytes:
    """The key in ``path``, without surrounding whitespace; :class:`HashKeyError` if none."""
    try:
        with open(path, "rb") as key_file:
            data = key_file.read(MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        raise HashKeyError(f"{path} does not exist") from None
    except OSError as exc:
        raise HashKeyError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_BYTES:
        raise HashKeyError(f"{path} is larger than {MAX_KEY_BYTES} bytes")
    key = data.strip()
    if not key:
        raise HashKeyError(f"{path} is empty")
    if len(key) < MIN_KEY_BYTES:
        raise HashKeyError(
            f"{path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} "
            "(e.g. openssl rand -hex 32)"
        )
    return key


def fingerprint(key: bytes) -> str:
    """8 hex digits that tell keys apart in a log without revealing them."""
    return hmac.digest(key, b"steward-key-id", "sha256").hex()[:8]


class HashKeys:
    """The proxy's own key and the keys policies name, each as :class:`Strategies`."""

    def __init__(self, default: bytes | None, directory: str = DEFAULT_HASH_KEY_DIR) -> None:
        self.directory = directory
        self.default = Strategies(default or secrets.token_bytes(32))
        self._random = default is None
        if default is not None:
            log.info("the proxy's own hash masking key: fingerprint %s", fingerprint(default))
        self._named: dict[HashKeySecretRef, Strategies] = {}
        self._missing: dict[HashKeySecretRef, str] = {}
        """Keys the running policies name that could not be read when last tried, and why."""

    def path(self, ref: HashKeySecretRef) -> str:
        """Where the key ``ref`` names is mounted."""
        return os.path.join(self.directory, ref.namespace, ref.name, ref.key)

    def _load(self, ref: HashKeySecretRef) -> Strategies:
        strategies = self._named.get(ref)
        if strategies is not None:
            return strategies
        try:
            if any(
                "/" in part or part in ("", ".", "..")
                for part in (ref.namespace, ref.name, ref.key)
            ):
                raise HashKeyError(f"{_describe(ref)} is not a file name")
            key = read_key(self.path(ref))
        except HashKeyError as exc:
            self._missing[ref] = str(exc)
            raise
        self._missing.pop(ref, None)
        strategies = self._named[ref] = Strategies(key)
        log.info("hash masking key %s loaded: fingerprint %s", _describe(ref), fingerprint(key))
        return strategies

    def for_config(self, config: MaskingConfig) -> tuple[Strategies | None, str | None]:
        """The strategies for a subject's masking, or None and why it cannot run.

        Masking that cannot run gets no strategies at all (never the proxy's
        own key in their place): the caller refuses the subject.
        """
        keys = config.hash_keys
        if len(keys) > 1:
            named = ", ".join(f"{policy} ({_describe(ref)})" for policy, ref in config.hashing)
            return None, (
                f"the policies that cover this subject hash values under different keys: "
                f"{named}; give them one spec.masking.hashKeySecretRef"
            )
        if not keys or keys[0] is None:
            return self.default, None
        ref = keys[0]
        try:
            return self._load(ref), None
        except HashKeyError as exc:
            return None, _unavailable(", ".join(p for p, r in config.hashing if r == ref), ref, exc)

    def check(self, policies: PolicySet) -> None:
        """Log, when a policy set loads, the keys its masking needs and cannot have.

        Loads every key a policy that hashes names (so a missing one shows at
        start, not only at the first sign-in), and warns when a policy that
        hashes relies on a random key.
        """
        self._missing = {}
        random_for = []
        for policy in policies.policies:
            if not policies.hashes(policy):
                continue
            ref = policy.hash_key_secret_ref
            if ref is None:
                if self._random:
                    random_for.append(policy.key)
                continue
            try:
                self._load(ref)
            except HashKeyError as exc:
                log.error(
                    "%s; sign-ins of the subjects it masks are refused until it is",
                    _unavailable(policy.key, ref, exc),
                )
        if random_for:
            log.warning(
                "no --hash-key-file: hash pseudonyms of policy %s change when the proxy restarts",
                ", ".join(random_for),
            )

    def retry(self) -> None:
        """Read again the keys that could not be read (a Secret volume fills in late)."""
        for ref in list(self._missing):
            with contextlib.suppress(HashKeyError):
                self._load(ref)

    def blocked(self, policies: PolicySet) -> dict[str, str]:
        """The policies (by key) whose hash key could not be read when last tried, and why.

        Their subjects that get ``hash`` cannot sign in. Only reads what the
        last attempt found (safe from another thread: ``/readyz``).
        """
        blocked = {}
        for policy in policies.policies:
            ref = policy.hash_key_secret_ref
            if ref is None or not policies.hashes(policy):
                continue
            problem = self._missing.get(ref)
            if problem is not None:
                blocked[policy.key] = _unavailable(policy.key, ref, problem)
        return blocked


def _unavailable(policies: str, ref: HashKeySecretRef, problem: object) -> str:
    return (
        f"the hash masking key of policy {policies} ({_describe(ref)}) is not available: {problem}"
    )


def _describe(ref: HashKeySecretRef | None) -> str:
    if ref is None:
        return "the proxy's own key"
    return f"Secret {ref.namespace}/{ref.name}, key {ref.key}"
