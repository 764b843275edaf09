"""Who is asking, and whether they may pull a repository: between routing and the registry.

Identities come from the mirror's own tokens or from Basic credentials checked
against the htpasswd file; no credentials is the anonymous identity.  What an
identity may pull is decided by, in order:

1. the registry's repository policy (``repositories``), for everyone: a blocked
   repository is 403 DENIED with the operator's message, before the cache is
   consulted;
2. a token's grants: a token that does not name the repository is 401 for an
   anonymous client (log in) and 403 for a user (this user may not);
3. without a token, the user's or the anonymous ``pull`` patterns.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

import attrs
from twisted.internet.defer import Deferred, succeed

from dockermirror.auth.htpasswd import Htpasswd
from dockermirror.auth.tokens import TokenIssuer
from dockermirror.errors import DENIED, UNAUTHORIZED, RegistryError
from dockermirror.policy.patterns import Patterns
from dockermirror.policy.settings import PolicySettings
from dockermirror.routing import Target


@attrs.frozen
class Identity:
    user: str | None = None
    # Repositories a token grants pull on; None when the identity is not from a token.
    granted: frozenset[str] | None = None
    # A client's own account at a registry whose credentials are passed through.
    upstream: tuple[str, str] | None = attrs.field(default=None, repr=False)


ANONYMOUS = Identity()


class AccessPolicy:
    def __init__(
        self,
        settings: PolicySettings,
        users: Htpasswd | None,
        issuer: TokenIssuer,
        *,
        passthrough: bool = False,
    ) -> None:
        self.settings = settings
        self._users = users
        self._issuer = issuer
        # Some registry takes clients' own accounts: Basic credentials that are no mirror
        # user's are such an account, for the upstream to judge.
        self._passthrough = passthrough

    @property
    def login_enabled(self) -> bool:
        return self._users is not None

    def check_address(self, address: str | None) -> None:
        """Refuse a client whose address the ``[access]`` lists keep out."""
        access = self.settings.access
        if not access.allow and not access.deny:
            return
        if address is None:
            return  # a unix socket's client is on this host, which the socket's mode guards
        ip = client_address(address)
        if ip is None:
            # A proxy's "unknown", "_hidden" or garbage: no list can vouch for it.
            raise RegistryError(DENIED, message="this mirror does not serve your address")
        if any(ip in net for net in access.deny) or (
            access.allow and not any(ip in net for net in access.allow)
        ):
            raise RegistryError(DENIED, message="this mirror does not serve your address")

    def identify(self, authorization: str | None) -> Deferred[Identity]:
        """The identity a request's ``Authorization`` header proves; 401 for a bad one."""
        scheme, _, credentials = (authorization or "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            grant = self._issuer.verify(credentials.strip())
            if grant is None:
                raise RegistryError(UNAUTHORIZED, message="invalid or expired token")
            return succeed(Identity(grant.user, grant.repositories, grant.upstream))
        if scheme == "basic" and (self._users is not None or self._passthrough):
            user, password = basic_credentials(credentials)
            return self.login(user, password)
        return succeed(ANONYMOUS)

    def login(self, user: str, password: str) -> Deferred[Identity]:
        """The mirror user, if the password is theirs; else the client's upstream account
        when one can be passed through; 401 otherwise."""
        if self._users is None:
            return succeed(Identity(upstream=(user, password)) if self._passthrough else ANONYMOUS)

        users = self._users

        def checked(ok: bool) -> Identity:
            if ok:
                return Identity(user)
            # A mirror user's wrong password is never sent on to an upstream.
            if self._passthrough and user not in users.users():
                return Identity(upstream=(user, password))
            raise RegistryError(UNAUTHORIZED, message="wrong user name or password")

        return users.verify(user, password).addCallback(checked)

    def may_pull(self, identity: Identity, target: Target) -> bool:
        """Whether ``identity``, as a user or anonymous, may pull ``target`` (tokens aside)."""
        if not target.registry.repositories.matches(target.name):
            return False
        auth = self.settings.auth
        if not self.login_enabled or target.registry.passthrough:
            return True  # (a client's own account: the upstream judges)
        if identity.user is None:
            return auth.anonymous and auth.anonymous_pull.matches(target.label)
        return self._pull_patterns(identity.user).matches(target.label)

    def check_pull(self, identity: Identity, target: Target) -> None:
        """Raise the OCI error that keeps ``identity`` from pulling ``target``, if any."""
        registry = target.registry
        if not registry.repositories.matches(target.name):
            raise RegistryError(
                DENIED, {"repository": target.label}, message=registry.blocked_message
            )
        if not self.login_enabled:
            return  # without users, tokens only say what was asked for, not what is allowed
        if registry.passthrough:
            # With a client's own account the upstream judges; with none, the mirror's
            # rule for anonymous clients holds.
            if (
                identity.user is None
                and identity.upstream is None
                and not self.settings.auth.anonymous
            ):
                raise RegistryError(UNAUTHORIZED, message="log in to use this mirror")
            return
        if identity.granted is not None:
            allowed = target.label in identity.granted
        else:
            allowed = self.may_pull(identity, target)
        if allowed:
            return
        if identity.user is None:
            raise RegistryError(
                UNAUTHORIZED,
                {"repository": target.label},
                message="log in to pull this repository",
                scope=f"repository:{target.client_name}:pull",
            )
        raise RegistryError(
            DENIED,
            {"repository": target.label, "user": identity.user},
            message=f"user {identity.user!r} may not pull this repository",
        )

    def _pull_patterns(self, user: str) -> Patterns:
        own = self.settings.users.get(user)
        if own is not None and own.pull is not None:
            return own.pull
        return self.settings.auth.user_pull


def basic_credentials(encoded: str) -> tuple[str, str]:
    """``user:password`` from a Basic credential; 401 when it is no such thing."""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise RegistryError(UNAUTHORIZED, message="malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise RegistryError(UNAUTHORIZED, message="malformed Basic credentials")
    return user, password


def client_address(
    address: str | None,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
