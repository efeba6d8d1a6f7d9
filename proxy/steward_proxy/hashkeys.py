"""Keys of the ``hash`` masking strategy: the proxy's own, and those policies name.

The proxy's own key comes from ``--hash-key-file`` (a random key per process
without it, so pseudonyms change on restart). A DatabaseAccessPolicy may name
a Secret key instead (``spec.masking.hashKeySecretRef: {name, key}``): the
operator mounts that Secret into the sidecar container only, and the proxy
reads the key from ``DIR/NAME/KEY``, ``DIR`` being ``--hash-key-dir``. Only the
reference travels in a bundle; the key is never logged, audited or counted.

A subject's pseudonyms use the key its policies name (see
:attr:`~steward_proxy.masking.plan.MaskingConfig.hash_keys`). When that key
cannot be read (the Secret is missing, the file is empty), or the policies
that cover the subject name different keys, its masking is *unavailable*:
its sign-ins are refused with the reason, and the masker refuses every
statement, so a pseudonym is never made with a key other than the one named.
A key read is kept for the life of the process, so pseudonyms stay stable;
a key that could not be read is tried again at the next sign-in.

Policy and Secret names are validated by the compiler (DNS names, Secret
key characters), so messages carry them as they are. Reads small local
files; no sockets.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import TYPE_CHECKING

from steward_proxy.masking.strategies import Strategies

if TYPE_CHECKING:  # light at import: ``steward proxy --help`` shows the default directory
    from steward_proxy.masking.plan import MaskingConfig
    from steward_proxy.policy.model import HashKeySecretRef, PolicySet

__all__ = ["DEFAULT_HASH_KEY_DIR", "MAX_KEY_BYTES", "HashKeyError", "HashKeys", "read_key"]

log = logging.getLogger("steward.proxy")

DEFAULT_HASH_KEY_DIR = "/etc/steward/hash-keys"
"""Where the operator mounts the Secret a policy names (``DIR/NAME/KEY``)."""
MAX_KEY_BYTES = 65536
"""A key file larger than this is refused (a path mistaken for a key file)."""


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
    return key


class HashKeys:
    """The proxy's own key and the keys policies name, each as :class:`Strategies`."""

    def __init__(self, default: bytes | None, directory: str = DEFAULT_HASH_KEY_DIR) -> None:
        self.directory = directory
        self.default = Strategies(default or secrets.token_bytes(32))
        self._random = default is None
        self._named: dict[HashKeySecretRef, Strategies] = {}

    def path(self, ref: HashKeySecretRef) -> str:
        """Where the key ``ref`` names is mounted."""
        return os.path.join(self.directory, ref.name, ref.key)

    def _load(self, ref: HashKeySecretRef) -> Strategies:
        strategies = self._named.get(ref)
        if strategies is None:
            if "/" in ref.name + ref.key or ref.name in (".", "..") or ref.key in (".", ".."):
                raise HashKeyError(f"Secret {ref.name!r} key {ref.key!r} is not a file name")
            strategies = self._named[ref] = Strategies(read_key(self.path(ref)))
        return strategies

    def for_config(self, config: MaskingConfig) -> tuple[Strategies, str | None]:
        """The strategies for a subject's masking, and why it cannot run (None: it can).

        When it cannot, the strategies returned are the proxy's own; the
        masker refuses every statement, so they are never used.
        """
        keys = config.hash_keys
        if len(keys) > 1:
            named = ", ".join(f"{policy} ({_describe(ref)})" for policy, ref in config.hashing)
            return self.default, (
                f"the policies that cover this subject hash values under different keys: "
                f"{named}; give them one spec.masking.hashKeySecretRef"
            )
        if not keys or keys[0] is None:
            return self.default, None
        ref = keys[0]
        try:
            return self._load(ref), None
        except HashKeyError as exc:
            policies = ", ".join(p for p, r in config.hashing if r == ref)
            return self.default, (
                f"the hash masking key of policy {policies} ({_describe(ref)}) "
                f"is not available: {exc}"
            )

    def check(self, policies: PolicySet) -> None:
        """Log, when a policy set loads, the keys its masking needs and cannot have.

        Loads every key a policy that hashes names (so a missing one shows at
        start, not only at the first sign-in), and warns when a policy that
        hashes relies on a random key.
        """
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
                    "the hash masking key of policy %s (%s) is not available: %s; "
                    "sign-ins of the subjects it masks are refused until it is",
                    policy.key,
                    _describe(ref),
                    exc,
                )
        if random_for:
            log.warning(
                "no --hash-key-file: hash pseudonyms of policy %s change when the proxy restarts",
                ", ".join(random_for),
            )


def _describe(ref: HashKeySecretRef | None) -> str:
    if ref is None:
        return "the proxy's own key"
    return f"Secret {ref.name}, key {ref.key}"
