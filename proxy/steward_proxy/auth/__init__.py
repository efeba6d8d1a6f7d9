"""Client authentication: who is connecting, proven (DESIGN, "Identity").

One method per listener, chosen by flags (:func:`methods.choose_method`):

- ``oidc`` (:mod:`.oidc`): a person's ID token, sent as the password over TLS;
- ``cert`` (:mod:`.mtls`): the client certificate verified in the TLS handshake;
- ``scram-sha-256`` (:mod:`.scram`): a users file of SCRAM verifiers;
- ``identity`` and ``trust`` (:mod:`.methods`): a sidecar's fixed subject, or
  the startup user name believed (loopback or ``--insecure-trust`` only).

Each method makes a sans-I/O :class:`~.base.Exchange` per client; the shell
(``client.py``) sends what it asks for and feeds back the client's answers.
:mod:`.jwks` (fetching the OIDC keys) and :mod:`.setup` (reading the flags and
files) are the only modules here with I/O; the others are pure.
"""

from steward_proxy.auth.base import Authenticator, AuthFailed, ClientFacts, Exchange, Step
from steward_proxy.auth.methods import AuthConfigError, FixedIdentity, Trust

__all__ = [
    "AuthConfigError",
    "AuthFailed",
    "Authenticator",
    "ClientFacts",
    "Exchange",
    "FixedIdentity",
    "Step",
    "Trust",
]
