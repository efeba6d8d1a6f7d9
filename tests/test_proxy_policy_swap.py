"""The one policy swap: ``ProxyServer.replace_policies`` and the judges sessions hold.

No sockets: a server is built but never started, the audit sink is a list.
Sessions keep the judge they got at sign-in; it must follow every swap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from steward_proxy.client import Refusal
from steward_proxy.policy import Identity, compile_documents
from steward_proxy.server import LiveJudge, PolicyRefused, ProxyServer, ProxySettings
from steward_proxy.upstream import UpstreamTarget

ALICE = Identity("user:alice")


def policies(default: str = "allow", subject: str = "alice") -> Any:
    return compile_documents(
        [
            {
                "apiVersion": "steward.dev/v1alpha1",
                "kind": "DatabaseAccessPolicy",
                "metadata": {"name": "p"},
                "spec": {"subjects": [{"kind": "User", "name": subject}], "defaultAction": default},
            }
        ]
    )


class Trail:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[dict[str, Any]] = []
        self.fail = fail

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        if self.fail:
            raise OSError("disk full")
        record = {"type": type, **fields}
        self.records.append(record)
        return record


def server(trail: Trail | None = None, **settings: Any) -> ProxyServer:
    proxy_settings = ProxySettings(
        listen_host="127.0.0.1",
        listen_port=0,
        upstream=UpstreamTarget.from_url("postgresql://steward@127.0.0.1:5432/db"),
        **settings,
    )
    return ProxyServer(proxy_settings, policies(), trail or Trail())


def test_a_held_judge_follows_a_swap() -> None:
    proxy = server()
    judge = proxy.judge_for(ALICE)
    assert isinstance(judge, LiveJudge)
    assert judge.judge("SELECT 1").decision.action == "allow"
    assert proxy.replace_policies(policies("deny"), source="test", generation=2, bundle_hash="b")
    assert judge.judge("SELECT 1").decision.action == "deny"


def test_a_swap_drops_every_cached_verdict() -> None:
    proxy = server()
    proxy.judge_for(ALICE).judge("SELECT 1")
    assert proxy.judges
    proxy.replace_policies(policies(), source="test")
    assert proxy.judges == {}


def test_a_subject_the_new_set_does_not_cover_is_denied_mid_session() -> None:
    proxy = server()
    judge = proxy.judge_for(ALICE)
    proxy.replace_policies(policies(subject="bob"), source="test")
    verdict = judge.judge("SELECT 1")
    assert verdict.decision.action == "deny"
    assert "no policy covers" in verdict.decision.message
    with pytest.raises(Refusal):
        proxy.judge_for(ALICE)  # and a new session is refused at sign-in
    assert ALICE not in proxy.judges  # unknown subjects do not grow the cache


def test_older_generations_are_refused_and_the_same_bundle_changes_nothing() -> None:
    trail = Trail()
    proxy = server(trail)
    assert proxy.replace_policies(policies(), source="a", generation=5, bundle_hash="h5")
    assert not proxy.replace_policies(policies(), source="b", generation=5, bundle_hash="h5")
    with pytest.raises(PolicyRefused, match="older"):
        proxy.replace_policies(policies("deny"), source="c", generation=4, bundle_hash="h4")
    with pytest.raises(PolicyRefused, match="other content"):
        proxy.replace_policies(policies("deny"), source="d", generation=5, bundle_hash="x")
    assert [r["client"] for r in trail.records] == ["a"]
    assert proxy.policy_generation == 5


def test_every_load_is_audited_before_it_applies() -> None:
    trail = Trail()
    proxy = server(trail)
    new = policies("deny")
    proxy.replace_policies(
        new, source="push from 10.0.0.1", generation=7, bundle_hash="abc", target="ns/p"
    )
    [record] = trail.records
    assert record["type"] == "policy.loaded"
    assert record["fingerprint"] == new.compiled_hash
    assert record["statement"] == "bundle ns/p generation 7 hash abc"
    assert record["client"] == "push from 10.0.0.1"


def test_an_unwritable_trail_keeps_the_old_set_and_fails_closed() -> None:
    proxy = server(Trail(fail=True))
    before = proxy.policies
    with pytest.raises(OSError):
        proxy.replace_policies(policies("deny"), source="test", generation=1, bundle_hash="h")
    assert proxy.policies is before
    assert proxy.audit_failed


HASHING = [
    {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "MaskingRule",
        "metadata": {"name": "names"},
        "spec": {"rules": [{"columns": ["public.users.name"], "strategy": "hash"}]},
    },
    {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "DatabaseAccessPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "subjects": [{"kind": "User", "name": "alice"}],
            "defaultAction": "allow",
            "masking": {"rules": ["names"], "hashKeySecretRef": {"name": "k", "key": "hmac"}},
        },
    },
]


def test_a_judge_without_its_hash_key_is_not_kept_for_the_next_sign_in(tmp_path: Path) -> None:
    proxy = server(hash_key_dir=str(tmp_path))
    proxy.replace_policies(compile_documents(HASHING), source="test")
    # A session in flight meets the missing key (its LiveJudge asks for the current judge).
    assert proxy.current_judge(ALICE).masker.unavailable is not None
    assert ALICE not in proxy.judges
    with pytest.raises(Refusal, match="is not available"):
        proxy.judge_for(ALICE)
    key = tmp_path / "default" / "k" / "hmac"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"a key of thirty-two bytes, or so")
    # The first sign-in after the key appears reads it; no stale refusal.
    assert isinstance(proxy.judge_for(ALICE), LiveJudge)
    assert proxy.current_judge(ALICE).masker.unavailable is None
    assert ALICE in proxy.judges
