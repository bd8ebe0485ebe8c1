"""MTA-STS discovery, fetch and cache (RFC 8461 §3, §5.1) against a real loopback nsd and a
real HTTPS policy server (trustme certificate for mta-sts.<domain>, port 443)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from tests.support.dns_server import dns_server
from tests.support.mta_sts_server import Answer, PolicyServer, policy_server, policy_text

from mailwarden.delivery.mta_sts import MtaSts, target_policy
from mailwarden.delivery.mta_sts.fetch import MAX_POLICY_BYTES
from mailwarden.delivery.mta_sts.store import PolicyStore
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.lib import dns

DOMAINS = ["good", "redirect", "html", "big", "broken", "gone", "other-cert", "testing"]


def zone(address: str, policy_id: str = "1") -> str:
    records = [f"mta-sts.{name} IN A {address}" for name in DOMAINS]
    records += [f'_mta-sts.{name} IN TXT "v=STSv1; id={policy_id};"' for name in DOMAINS]
    records.append('_mta-sts.notxt IN TXT "v=spf1 -all"')
    return "\n".join(records) + "\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def sts_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server(sts_ca: trustme.CA) -> Iterator[PolicyServer]:
    # Every policy host but mta-sts.other-cert.sts.test is in the certificate.
    hosts = [f"mta-sts.{name}.sts.test" for name in DOMAINS if name != "other-cert"]
    with policy_server(sts_ca, hosts) as running:
        yield running


@pytest.fixture
def sts_dns(server: PolicyServer, tmp_path: Path) -> Iterator[None]:
    with dns_server(tmp_path / "nsd", {"sts.test": zone(server.address)}) as nsd:
        dns.configure([nsd.address], timeout=3.0)
        yield
    dns.configure()


@pytest.fixture
def ca_path(tmp_path: Path, sts_ca: trustme.CA) -> Path:
    path = tmp_path / "sts-ca.pem"
    sts_ca.cert_pem.write_to_path(str(path))
    return path


def serve(server: PolicyServer, name: str, answer: Answer) -> str:
    host = f"mta-sts.{name}.sts.test"
    server.policies[host] = answer
    server.fetches[host] = 0
    return host


def cache(ca_path: Path, tmp_path: Path, clock: Clock, **kwargs: float) -> MtaSts:
    store = PolicyStore(tmp_path / "mta-sts.sqlite")
    return MtaSts(store, ca_file=ca_path, clock=clock, recheck=kwargs.get("recheck", 0.0))


ENFORCE = policy_text("enforce", ["mx.good.sts.test", "*.backup.sts.test"], max_age=3600)


async def test_an_enforce_policy_is_fetched_and_applied_per_mx(
    server: PolicyServer, sts_dns: None, ca_path: Path, tmp_path: Path
) -> None:
    serve(server, "good", Answer(ENFORCE))
    lookup = await cache(ca_path, tmp_path, Clock()).lookup("good.sts.test")
    assert lookup.cached is not None and lookup.cached.policy.mode == "enforce"
    base = TlsPolicy(TlsMode.OPTIONAL, ca_file=ca_path)
    listed = target_policy(
        lookup, "good.sts.test", Target(10, "mx.good.sts.test", "127.0.0.1"), base
    )
    assert listed is not None
    assert (listed.mode, listed.verify_name, listed.source) == (
        TlsMode.REQUIRED_VERIFY,
        "mx.good.sts.test",
        "mta-sts",
    )
    assert listed.policy_type == "sts" and listed.refused is None
    assert listed.mx_patterns == ("mx.good.sts.test", "*.backup.sts.test")
    assert listed.policy_strings[1] == "mode: enforce"
    stranger = target_policy(lookup, "good.sts.test", Target(20, "evil.example", "192.0.2.1"), base)
    assert stranger is not None and stranger.refused is not None


async def test_the_policy_is_kept_across_a_restart_and_refetched_when_the_id_changes(
    server: PolicyServer, ca_path: Path, tmp_path: Path
) -> None:
    host = serve(server, "good", Answer(ENFORCE))
    clock = Clock()
    with dns_server(tmp_path / "nsd1", {"sts.test": zone(server.address, "1")}) as nsd:
        dns.configure([nsd.address], timeout=3.0)
        await cache(ca_path, tmp_path, clock).lookup("good.sts.test")
        # A new worker (or a restart) with the same file: same id, nothing fetched again.
        again = await cache(ca_path, tmp_path, clock).lookup("good.sts.test")
    assert again.cached is not None and server.fetches[host] == 1
    server.policies[host] = Answer(policy_text("testing", ["mx.good.sts.test"], max_age=3600))
    with dns_server(tmp_path / "nsd2", {"sts.test": zone(server.address, "2")}) as nsd:
        dns.configure([nsd.address], timeout=3.0)
        try:
            changed = await cache(ca_path, tmp_path, clock).lookup("good.sts.test")
        finally:
            dns.configure()
    assert server.fetches[host] == 2
    assert changed.cached is not None
    assert (changed.cached.policy_id, changed.cached.policy.mode) == ("2", "testing")


async def test_a_cached_policy_keeps_applying_when_the_refresh_fails_until_max_age(
    server: PolicyServer, sts_dns: None, ca_path: Path, tmp_path: Path
) -> None:
    host = serve(server, "broken", Answer(policy_text("enforce", ["mx.broken.sts.test"], 600)))
    clock = Clock()
    sts = cache(ca_path, tmp_path, clock)
    assert (await sts.lookup("broken.sts.test")).cached is not None
    server.policies[host] = Answer("oops", status=500)
    clock.now += 599  # fetched again only after a day or on a new id; expiry still applies
    sts.refresh = 0.0  # make every look a refresh, so that the failing fetch is tried
    kept = await sts.lookup("broken.sts.test")
    assert server.fetches[host] == 2
    assert kept.cached is not None and kept.failure is None  # enforced still, not reported
    clock.now += 2  # past max_age: the expired policy must not apply
    gone = await sts.lookup("broken.sts.test")
    assert gone.cached is None and gone.failure == "sts-policy-fetch-error"


async def test_max_age_expiry_refetches(
    server: PolicyServer, sts_dns: None, ca_path: Path, tmp_path: Path
) -> None:
    host = serve(server, "gone", Answer(policy_text("enforce", ["mx.gone.sts.test"], 60)))
    clock = Clock()
    sts = cache(ca_path, tmp_path, clock)
    await sts.lookup("gone.sts.test")
    clock.now += 30
    await sts.lookup("gone.sts.test")
    assert server.fetches[host] == 1
    clock.now += 31
    fresh = await sts.lookup("gone.sts.test")
    assert server.fetches[host] == 2 and fresh.cached is not None


async def test_the_memory_layer_answers_within_recheck_without_dns_or_https(
    server: PolicyServer, ca_path: Path, tmp_path: Path
) -> None:
    host = serve(server, "good", Answer(ENFORCE))
    clock = Clock()
    with dns_server(tmp_path / "nsd", {"sts.test": zone(server.address)}) as nsd:
        dns.configure([nsd.address], timeout=3.0)
        sts = MtaSts(None, ca_file=ca_path, clock=clock, recheck=300)
        await sts.lookup("good.sts.test")
    try:
        dns.configure(["127.0.0.1:9"], timeout=1.0)  # nothing answers DNS any more
        clock.now += 100
        lookup = await sts.lookup("good.sts.test")
    finally:
        dns.configure()
    assert lookup.cached is not None and server.fetches[host] == 1


@pytest.mark.parametrize(
    ("name", "answer", "failure"),
    [
        (
            "redirect",
            Answer("", 301, headers={"Location": "https://elsewhere/"}),
            "sts-policy-fetch-error",
        ),
        ("html", Answer(ENFORCE, content_type="text/html"), "sts-policy-fetch-error"),
        ("big", Answer(ENFORCE + "x: " + "y" * MAX_POLICY_BYTES + "\n"), "sts-policy-fetch-error"),
        ("broken", Answer("this is not a policy\n"), "sts-policy-invalid"),
        ("other-cert", Answer(ENFORCE), "sts-webpki-invalid"),
    ],
)
async def test_a_bad_answer_is_no_policy_and_a_reported_failure(
    server: PolicyServer,
    sts_dns: None,
    ca_path: Path,
    tmp_path: Path,
    name: str,
    answer: Answer,
    failure: str,
) -> None:
    serve(server, name, answer)
    lookup = await cache(ca_path, tmp_path, Clock()).lookup(f"{name}.sts.test")
    assert lookup.cached is None and lookup.failure == failure
    base = TlsPolicy(TlsMode.OPTIONAL)
    policy = target_policy(lookup, f"{name}.sts.test", Target(10, "mx.x", "127.0.0.1"), base)
    assert policy is not None
    assert (policy.mode, policy.policy_type, policy.policy_failure) == (
        TlsMode.OPTIONAL,
        "sts",
        failure,
    )


async def test_a_certificate_not_from_the_configured_ca_is_refused(
    server: PolicyServer, sts_dns: None, tmp_path: Path
) -> None:
    serve(server, "good", Answer(ENFORCE))
    lookup = await MtaSts(None, clock=Clock()).lookup("good.sts.test")  # the system store
    assert lookup.failure == "sts-webpki-invalid"


async def test_no_record_means_no_policy_and_nothing_fetched(
    server: PolicyServer, sts_dns: None, ca_path: Path, tmp_path: Path
) -> None:
    sts = cache(ca_path, tmp_path, Clock())
    for domain in ("notxt.sts.test", "nothing.sts.test"):
        lookup = await sts.lookup(domain)
        assert lookup.cached is None and lookup.failure is None
        policy = target_policy(lookup, domain, Target(10, "mx", "127.0.0.1"), TlsPolicy())
        assert policy is None


async def test_testing_mode_keeps_the_route_policy_with_the_report_fields(
    server: PolicyServer, sts_dns: None, ca_path: Path, tmp_path: Path
) -> None:
    serve(server, "testing", Answer(policy_text("testing", ["mx.testing.sts.test"])))
    lookup = await cache(ca_path, tmp_path, Clock()).lookup("testing.sts.test")
    base = TlsPolicy(TlsMode.OPTIONAL)
    listed = target_policy(
        lookup, "testing.sts.test", Target(10, "mx.testing.sts.test", "::1"), base
    )
    other = target_policy(lookup, "testing.sts.test", Target(20, "mx.elsewhere", "::1"), base)
    assert listed is not None and other is not None
    assert (listed.mode, listed.source, listed.policy_type) == (TlsMode.OPTIONAL, "config", "sts")
    assert listed.policy_failure is None and listed.refused is None
    assert other.policy_failure == "validation-failure" and other.refused is None


async def test_mode_none_is_cached_and_means_no_policy(
    server: PolicyServer, sts_dns: None, ca_path: Path, tmp_path: Path
) -> None:
    host = serve(server, "gone", Answer("version: STSv1\nmode: none\nmax_age: 86400\n"))
    sts = cache(ca_path, tmp_path, Clock())
    for _ in range(2):
        lookup = await sts.lookup("gone.sts.test")
        assert lookup.cached is not None and lookup.cached.policy.mode == "none"
        assert target_policy(lookup, "gone.sts.test", Target(10, "mx", "::1"), TlsPolicy()) is None
    assert server.fetches[host] == 1
