"""The compiled policy model: frozen dataclasses the proxy consults per connection.

Pure: no I/O. ``compile.py`` builds these from validated documents; ``decide.py``
judges statements against them. Globs are compiled to regular expressions once,
when a ``Guardrail`` or ``MaskingColumnRule`` is built, so a decision does no
pattern translation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Any, Literal, Protocol

Action = Literal["allow", "deny", "review", "log"]
DefaultAction = Literal["allow", "deny"]
SubjectKind = Literal["ServiceAccount", "User", "Group"]

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
USER_PREFIX = "user:"
GROUP_PREFIX = "group:"

# Most restrictive last: combining decisions keeps the highest rank.
ACTION_RANK: Mapping[str, int] = {"allow": 0, "log": 1, "review": 2, "deny": 3}


class OperationLike(Protocol):
    """One thing a statement executes (``sql.Operation`` fits).

    ``command`` is a command tag or ``DYNAMIC``, ``table`` a ``schema.table``
    name or None, ``unbounded`` whether it is an UPDATE or DELETE that may
    change every row, ``copy`` where a COPY's data goes (``stdio``, ``file``,
    ``program``) and ``language`` the language of a DO block or function.
    """

    @property
    def command(self) -> str: ...
    @property
    def table(self) -> str | None: ...
    @property
    def unbounded(self) -> bool: ...
    @property
    def copy(self) -> str | None: ...
    @property
    def language(self) -> str | None: ...


class StatementLike(Protocol):
    """What a decision needs to know about one statement (``sql.StatementInfo`` fits).

    ``command`` is the command tag, ``operations`` what it executes (judged one
    by one; none means one operation of ``command``), ``tables`` every
    ``schema.table`` it names, ``functions`` lower-case names of the functions
    it calls or wires in, ``settings`` the ``(name, value)`` run-time
    parameters it changes.
    """

    @property
    def command(self) -> str: ...
    @property
    def operations(self) -> Sequence[OperationLike]: ...
    @property
    def tables(self) -> tuple[str, ...]: ...
    @property
    def functions(self) -> tuple[str, ...]: ...
    @property
    def settings(self) -> tuple[tuple[str, str | None], ...]: ...


class PolicyError(Exception):
    """Policy documents that do not load, validate or compile; ``errors`` lists each."""

    def __init__(self, errors: list[str] | tuple[str, ...]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("\n".join(self.errors) if self.errors else "invalid policy")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is connected: ``user:NAME`` or ``system:serviceaccount:NS:NAME``, plus groups.

    Groups may be given bare (``dba``) or prefixed (``group:dba``); they are kept
    bare.
    """

    subject: str
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not is_valid_subject(self.subject):
            raise ValueError(
                f"invalid subject {self.subject!r}: expected user:NAME or "
                "system:serviceaccount:NAMESPACE:NAME"
            )
        groups = tuple(g.removeprefix(GROUP_PREFIX) for g in self.groups)
        if any(not g for g in groups):
            raise ValueError("a group name must not be empty")
        object.__setattr__(self, "groups", groups)


def is_valid_subject(subject: str) -> bool:
    """Whether ``subject`` is ``user:NAME`` or ``system:serviceaccount:NS:NAME``."""
    if subject.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, sep, name = subject[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
        return bool(namespace and sep and name and ":" not in name)
    return subject.startswith(USER_PREFIX) and len(subject) > len(USER_PREFIX)


@dataclass(frozen=True, slots=True)
class Subject:
    """One entry of ``subjects``, ``exemptSubjects`` or ``approvers``.

    A ServiceAccount's namespace is filled in at compile time (the policy's own
    namespace when the document omits it).
    """

    kind: SubjectKind
    name: str
    namespace: str | None = None

    def matches(self, identity: Identity) -> bool:
        if self.kind == "ServiceAccount":
            return identity.subject == f"{SERVICE_ACCOUNT_PREFIX}{self.namespace}:{self.name}"
        if self.kind == "User":
            return identity.subject == f"{USER_PREFIX}{self.name}"
        return self.name in identity.groups


@dataclass(frozen=True, slots=True)
class LabelSelectorRequirement:
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()


@dataclass(frozen=True, slots=True)
class CredentialsSecretRef:
    name: str
    username_key: str = "username"
    password_key: str = "password"


@dataclass(frozen=True, slots=True)
class HashKeySecretRef:
    """``spec.masking.hashKeySecretRef``: where the key of the ``hash`` strategy is kept.

    Only the reference: the key itself is read by the sidecar from the Secret
    the operator mounts into it, never carried in a bundle. The Secret is in
    the policy's namespace (the compiler fills it in): two namespaces that
    name the same Secret name name two keys.
    """

    namespace: str
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class DatabaseRef:
    host: str
    name: str
    port: int = 5432
    credentials_secret_ref: CredentialsSecretRef | None = None


def qualify_table(name: str) -> str:
    """``orders`` -> ``public.orders``; ``db.s.t`` -> ``s.t``; ``s.t`` unchanged."""
    parts = name.split(".")
    if len(parts) == 1:
        return f"public.{name}"
    return ".".join(parts[-2:])


def _glob_regex(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


@dataclass(frozen=True, slots=True)
class StatementOperation:
    """The one operation of a statement that lists none: its own command."""

    command: str
    table: str | None = None
    unbounded: bool = False
    copy: str | None = None
    language: str | None = None


def operations_of(statement: StatementLike) -> Sequence[OperationLike]:
    """What ``statement`` executes: its operations, or one operation of its command."""
    return statement.operations or (StatementOperation(statement.command),)


@dataclass(frozen=True, slots=True)
class Guardrail:
    """One ordered rule of a policy. Every criterion given must hold for a match.

    A guardrail judges a statement's operations (see ``sql.Operation``), each on
    its own: ``statements`` (command tags, plus ``DYNAMIC``), ``tables`` (globs
    over ``schema.table``, already qualified with ``public.``), ``without_where``
    (an UPDATE or DELETE operation that may change every row), ``copy`` (where a
    COPY operation's data goes) and ``languages`` (globs over the language of a
    DO block or function) must all hold for one operation. ``functions`` (globs
    over lower-case function names; a pattern without a dot is compared with the
    unqualified name) holds for every operation of a statement that calls or
    wires in a matching function.
    """

    name: str
    statements: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    without_where: bool = False
    copy: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    action: Action = "deny"
    message: str = ""
    _statement_set: frozenset[str] = field(
        default=frozenset(), init=False, repr=False, compare=False
    )
    _copy_set: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _tables_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _languages_re: re.Pattern[str] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _qualified_functions_re: re.Pattern[str] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _bare_functions_re: re.Pattern[str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        qualified = tuple(p.lower() for p in self.functions if "." in p)
        bare = tuple(p.lower() for p in self.functions if "." not in p)
        set_ = object.__setattr__
        set_(self, "_statement_set", frozenset(self.statements))
        set_(self, "_copy_set", frozenset(self.copy))
        set_(self, "_tables_re", _glob_regex(self.tables))
        set_(self, "_languages_re", _glob_regex(tuple(p.lower() for p in self.languages)))
        set_(self, "_qualified_functions_re", _glob_regex(qualified))
        set_(self, "_bare_functions_re", _glob_regex(bare))

    def matches(self, statement: StatementLike) -> bool:
        """Whether this guardrail matches any operation of ``statement``."""
        return any(self.matches_operation(op, statement) for op in operations_of(statement))

    def matches_operation(self, operation: OperationLike, statement: StatementLike) -> bool:
        """Whether this guardrail matches ``operation``, one of ``statement``'s."""
        if self._statement_set and operation.command not in self._statement_set:
            return False
        if self.without_where and not operation.unbounded:
            return False
        if self._copy_set and operation.copy not in self._copy_set:
            return False
        if self._tables_re is not None:
            table = operation.table
            if table is None or not self._tables_re.fullmatch(qualify_table(table)):
                return False
        if self._languages_re is not None:
            language = operation.language
            if language is None or not self._languages_re.fullmatch(language.lower()):
                return False
        if self.functions:
            return any(self._function_matches(f.lower()) for f in statement.functions)
        return True

    def _function_matches(self, function: str) -> bool:
        if self._qualified_functions_re is not None and self._qualified_functions_re.fullmatch(
            function
        ):
            return True
        bare = function.rsplit(".", 1)[-1]
        return self._bare_functions_re is not None and bool(self._bare_functions_re.fullmatch(bare))


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled DatabaseAccessPolicy."""

    name: str
    namespace: str
    subjects: tuple[Subject, ...]
    default_action: DefaultAction
    guardrails: tuple[Guardrail, ...] = ()
    masking_rule_names: tuple[str, ...] = ()
    detect: bool = False
    masking_predicates: Literal["allow", "deny"] = "deny"
    exempt_subjects: tuple[Subject, ...] = ()
    approvers: tuple[Subject, ...] = ()
    approval_ttl_seconds: int = 900
    database: DatabaseRef | None = None
    pod_selector: LabelSelector | None = None
    read_only: bool = False
    """``spec.readOnly``: PostgreSQL enforces read-only for the subjects it covers."""
    hash_key_secret_ref: HashKeySecretRef | None = None
    """Whose key ``hash`` uses for this policy's subjects; None: the proxy's own."""

    @property
    def key(self) -> str:
        """``namespace/name``, the way messages and audit records name a policy."""
        return f"{self.namespace}/{self.name}"

    def covers(self, identity: Identity) -> bool:
        return any(s.matches(identity) for s in self.subjects)

    def is_exempt_from_masking(self, identity: Identity) -> bool:
        return any(s.matches(identity) for s in self.exempt_subjects)

    def may_approve(self, identity: Identity) -> bool:
        return any(s.matches(identity) for s in self.approvers)


MaskingStrategy = Literal["redact", "partial", "email", "hash", "null"]


@dataclass(frozen=True, slots=True)
class MaskingColumnRule:
    """One entry of a MaskingRule's ``rules``: columns or data classes, and a strategy.

    ``columns`` are globs over ``schema.table.column`` (already qualified with
    ``public.`` where the document gave ``table.column``). ``keep_last`` is set
    only for the ``partial`` strategy.
    """

    strategy: MaskingStrategy
    columns: tuple[str, ...] = ()
    data_classes: tuple[str, ...] = ()
    keep_last: int | None = None
    _columns_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_columns_re", _glob_regex(self.columns))

    def matches_column(self, qualified_column: str) -> bool:
        """Whether ``schema.table.column`` is one of this rule's columns."""
        return self._columns_re is not None and bool(self._columns_re.fullmatch(qualified_column))


@dataclass(frozen=True, slots=True)
class MaskingRuleSet:
    """A compiled MaskingRule document."""

    name: str
    namespace: str
    rules: tuple[MaskingColumnRule, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def strategy_for_column(self, qualified_column: str) -> MaskingColumnRule | None:
        """The first rule naming ``schema.table.column``, or None."""
        for rule in self.rules:
            if rule.matches_column(qualified_column):
                return rule
        return None

    def strategy_for_class(self, data_class: str) -> MaskingColumnRule | None:
        """The first rule naming the data class, or None."""
        for rule in self.rules:
            if data_class in rule.data_classes:
                return rule
        return None


def plain(value: Any) -> Any:
    """The comparable content of a model object as JSON-ready data (private fields dropped)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.compare and not f.name.startswith("_")
        }
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every compiled policy and masking rule from one load, with a content hash.

    ``compiled_hash`` is the SHA-256 of the canonical JSON (sorted keys, no
    spaces) of the compiled content; the ``policy.loaded`` audit record and the
    operator's status carry it. Policies and masking rules are ordered by
    ``namespace/name``.
    """

    policies: tuple[Policy, ...] = ()
    masking_rules: tuple[MaskingRuleSet, ...] = ()
    compiled_hash: str = field(default="", init=False)
    _masking_index: Mapping[tuple[str, str], MaskingRuleSet] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "policies", tuple(sorted(self.policies, key=lambda p: (p.namespace, p.name))))
        set_(
            self,
            "masking_rules",
            tuple(sorted(self.masking_rules, key=lambda m: (m.namespace, m.name))),
        )
        content = {"policies": plain(self.policies), "maskingRules": plain(self.masking_rules)}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        set_(self, "compiled_hash", hashlib.sha256(canonical.encode()).hexdigest())
        set_(self, "_masking_index", {(m.namespace, m.name): m for m in self.masking_rules})

    def policies_for(self, identity: Identity) -> tuple[Policy, ...]:
        """The policies whose subjects cover ``identity``; empty means no access."""
        return tuple(p for p in self.policies if p.covers(identity))

    def hashes(self, policy: Policy) -> bool:
        """Whether a MaskingRule ``policy`` names masks something with ``hash``."""
        return any(r.strategy == "hash" for s in self.masking_for(policy) for r in s.rules)

    def masking_for(self, policy: Policy) -> tuple[MaskingRuleSet, ...]:
        """The MaskingRules a policy names, in the order it names them."""
        index = self._masking_index
        return tuple(
            index[(policy.namespace, n)]
            for n in policy.masking_rule_names
            if (policy.namespace, n) in index
        )
