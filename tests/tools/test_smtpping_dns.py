"""MX lookup and A/AAAA fallback against a real DNS server on loopback.

Debian's smtpping always asks the system resolver on port 53, so only ours is run
here, pointed at the fixture with SMTPPING_NAMESERVER=127.0.0.1:<port>.
"""

from __future__ import annotations

from tests.support.smtpping import LoopbackDNS, ScriptedSMTPServer, run_smtpping


def nameserver(dns_server: LoopbackDNS) -> str:
    return f"127.0.0.1:{dns_server.port}"


def test_mx_hosts_are_tried_by_preference_until_one_answers(
    ours: list[str], dns_server: LoopbackDNS, scripted_smtp: ScriptedSMTPServer
) -> None:
    # The preferred MX is on 127.0.0.2, where nothing listens: 1.1 moves on.
    dns_server.add("example.test", "MX", "20 backup.example.test.", "10 primary.example.test.")
    dns_server.add("primary.example.test", "A", "127.0.0.2")
    dns_server.add("backup.example.test", "A", "127.0.0.1")
    ran = run_smtpping(
        ours,
        *("-c", "2", "-w", "0", "-s", "1", "user@example.test", "-p", str(scripted_smtp.port)),
        nameserver=nameserver(dns_server),
    )
    assert ran.returncode == 0
    assert ran.stderr == "seq=0: connect() failed 127.0.0.2\n"
    assert ran.stdout.splitlines()[:2] == [
        f"PING user@example.test ([127.0.0.2]:{scripted_smtp.port}): 1050 bytes (SMTP DATA)",
        f"PING user@example.test ([127.0.0.1]:{scripted_smtp.port}): 1050 bytes (SMTP DATA)",
    ]
    assert "--- 127.0.0.1 SMTP ping statistics ---" in ran.stdout
    assert len(scripted_smtp.transactions) == 2
    assert ("example.test", "MX") in dns_server.queries


def test_domain_without_mx_falls_back_on_its_address(
    ours: list[str], dns_server: LoopbackDNS, scripted_smtp: ScriptedSMTPServer
) -> None:
    dns_server.add("nomx.test", "A", "127.0.0.1")
    ran = run_smtpping(
        ours,
        *("-c", "1", "-s", "0", "u@nomx.test", "-p", str(scripted_smtp.port)),
        nameserver=nameserver(dns_server),
    )
    assert ran.stdout.startswith(f"PING u@nomx.test ([127.0.0.1]:{scripted_smtp.port})")
    assert "seq=1," in ran.stdout
    assert [q for q in dns_server.queries if q[0] == "nomx.test"][:2] == [
        ("nomx.test", "MX"),
        ("nomx.test", "A"),
    ]


def test_nonexistent_domain_is_reported_and_nothing_is_sent(
    ours: list[str], dns_server: LoopbackDNS
) -> None:
    ran = run_smtpping(ours, "-c", "1", "u@missing.test", nameserver=nameserver(dns_server))
    assert ran.returncode == 0
    assert ran.stderr == "failed to resolve missing.test\n"
    assert ran.stdout == "\n--- no pings were sent ---\n"


def test_server_name_is_resolved_through_dns(
    ours: list[str], dns_server: LoopbackDNS, scripted_smtp: ScriptedSMTPServer
) -> None:
    dns_server.add("mx.named.test", "A", "127.0.0.1")
    ran = run_smtpping(
        ours,
        *("-c", "1", "-s", "0", "u@elsewhere.test", "@mx.named.test"),
        *("-p", str(scripted_smtp.port)),
        nameserver=nameserver(dns_server),
    )
    assert ran.stdout.startswith(f"PING u@elsewhere.test ([127.0.0.1]:{scripted_smtp.port})")
    assert len(scripted_smtp.transactions) == 1


def test_server_name_unknown_to_dns_goes_to_the_system_resolver(
    ours: list[str], dns_server: LoopbackDNS, scripted_smtp: ScriptedSMTPServer
) -> None:
    # "localhost" is not in the DNS fixture; 1.1 then hands the name to getaddrinfo.
    ran = run_smtpping(
        ours,
        *("-4", "-c", "1", "-s", "0", "u@example.org", "@localhost"),
        *("-p", str(scripted_smtp.port)),
        nameserver=nameserver(dns_server),
    )
    assert ran.stdout.startswith(f"PING u@example.org ([localhost]:{scripted_smtp.port})")
    assert "seq=1," in ran.stdout
