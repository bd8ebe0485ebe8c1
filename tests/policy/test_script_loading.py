"""Loading a policy script: every mistake is a ScriptError naming the file and line.

Also the safety net around calling a loaded script's hooks (mailwarden.policy.runner), for the
mistakes that only show when a hook runs.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest

from mailwarden.policy.actions import Accept, Defer, Reject
from mailwarden.policy.context import Connection, Recipient, Sender, Transaction
from mailwarden.policy.runner import HookFailed, call_hook
from mailwarden.policy.script import HOOK_PARAMETERS, ScriptError, load_script
from mailwarden.stats import counters


def write_script(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "policy.py"
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ScriptError) as caught:
        load_script(path)
    return str(caught.value)


# --- load errors -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.py"
    assert load_error(path) == f"{path}: policy script not found"


def test_a_directory_is_not_a_script(tmp_path: Path) -> None:
    assert load_error(tmp_path) == f"{tmp_path}: policy script not found"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        """
        async def connect(conn):
            return None

        async def helo(conn, helo)
            return None
        """,
    )
    message = load_error(path)
    assert message.startswith(f"{path}:4: syntax error: ")


def test_import_time_exception_names_file_line_and_error(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        """
        LIMITS = {"a": 1}

        DEFAULT_LIMIT = LIMITS["b"]
        """,
    )
    assert load_error(path) == f"{path}:3: import failed: KeyError: 'b'"


def test_import_time_exception_in_a_helper_names_the_script_line(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        """
        import ipaddress

        NETWORKS = [ipaddress.ip_network("10.0.0.0/33")]
        """,
    )
    message = load_error(path)
    assert message.startswith(f"{path}:3: import failed: ValueError: ")


def test_sys_exit_at_import_is_a_load_error_not_an_exit(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        """
        import sys

        sys.exit("not configured")
        """,
    )
    assert load_error(path) == f"{path}:3: import failed: SystemExit: not configured"


def test_hook_that_is_not_async_names_the_expected_signature(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        """
        async def connect(conn):
            return None


        def rcpt_to(conn, tx, recipient):
            return None
        """,
    )
    assert load_error(path) == (
        f"{path}:5: hook rcpt_to must be async def rcpt_to(conn, tx, recipient)"
    )


def test_hook_name_bound_to_a_non_function(tmp_path: Path) -> None:
    path = write_script(tmp_path, "data = b'not a hook'\n")
    assert load_error(path) == f"{path}:?: hook data must be async def data(conn, tx, message)"


@pytest.mark.parametrize(
    ("definition", "count"),
    [
        ("async def mail_from(conn, sender):", 2),
        ("async def mail_from(conn, tx, sender, extra):", 4),
        ("async def mail_from(*args):", 0),
    ],
)
def test_wrong_parameter_count_names_line_and_expected_signature(
    tmp_path: Path, definition: str, count: int
) -> None:
    path = write_script(tmp_path, f"# policy\n\n{definition}\n    return None\n")
    assert load_error(path) == (
        f"{path}:3: hook mail_from takes {count} parameters; "
        "expected async def mail_from(conn, tx, sender)"
    )


def test_required_keyword_only_parameter_is_refused(tmp_path: Path) -> None:
    path = write_script(tmp_path, "async def disconnect(conn, *, reason):\n    return None\n")
    assert "expected async def disconnect(conn)" in load_error(path)


def test_every_hook_of_the_contract_loads_and_other_names_are_ignored(tmp_path: Path) -> None:
    hooks = "\n".join(
        f"async def {name}({', '.join(parameters)}, extra=None):\n    return None\n"
        for name, parameters in HOOK_PARAMETERS.items()
    )
    helpers = "def helper(a, b, c, d):\n    return a\n\nasync def on_queue(x):\n    return x\n"
    script = load_script(write_script(tmp_path, hooks + helpers))
    assert set(script.hooks) == set(HOOK_PARAMETERS)
    assert script.hook("helper") is None
    assert script.hook("on_queue") is None


def test_dataclasses_with_postponed_annotations_load(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        """
        from __future__ import annotations

        from dataclasses import dataclass


        @dataclass(frozen=True)
        class Rule:
            domain: str
            transport: str


        RULES = [Rule("example.com", "lmtp")]


        async def connect(conn):
            return None
        """,
    )
    script = load_script(path)
    assert script.module is not None
    assert script.module.RULES[0].transport == "lmtp"


def test_each_load_is_a_fresh_module(tmp_path: Path) -> None:
    path = write_script(tmp_path, "seen = []\n\nasync def connect(conn):\n    return None\n")
    first, second = load_script(path), load_script(path)
    assert first.module is not None and second.module is not None
    first.module.seen.append("x")
    assert second.module.seen == []


# --- calling hooks: failures become HookFailed (451 4.3.0), a log line and a counter ---------


def connection() -> Connection:
    return Connection("c1", "inbound", "203.0.113.5", 40000, "192.0.2.1", 25)


async def call(
    tmp_path: Path, source: str, hook: str, *args: object, timeout: float = 5.0
) -> object:
    script = load_script(write_script(tmp_path, source))
    return await call_hook(script, hook, "c1", timeout, *args)


@pytest.mark.parametrize(
    "body",
    [
        "raise RuntimeError('lookup table missing')",
        "import sys; sys.exit(1)",
        "return 'OK'",  # not an action
        "return Accept",  # the class, not an action
    ],
)
async def test_failing_hook_raises_hookfailed_logs_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    source = "from mailwarden.policy.actions import Accept\n\n"
    source += f"async def connect(conn):\n    {body}\n"
    before = counters.script_errors
    with caplog.at_level(logging.ERROR, logger="mailwarden.policy"), pytest.raises(HookFailed):
        await call(tmp_path, source, "connect", connection())
    assert counters.script_errors == before + 1
    assert "connection c1: hook connect" in caplog.text


async def test_action_not_allowed_in_the_phase_is_a_script_error(tmp_path: Path) -> None:
    source = """
        from mailwarden.policy.actions import Hold

        async def rcpt_to(conn, tx, recipient):
            return Hold()
        """
    with pytest.raises(HookFailed):
        await call(tmp_path, source, "rcpt_to", connection(), Transaction("t"), Recipient("a", {}))


async def test_slow_hook_times_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = "import asyncio\n\nasync def connect(conn):\n    await asyncio.sleep(30)\n"
    with caplog.at_level(logging.ERROR, logger="mailwarden.policy"), pytest.raises(HookFailed):
        await call(tmp_path, source, "connect", connection(), timeout=0.05)
    assert "timed out" in caplog.text


async def test_slow_hook_lets_another_connections_hook_run_meanwhile(tmp_path: Path) -> None:
    # The slow connection's hook can only finish after the other connection's hook has run:
    # if hook calls were serialised (a lock, a blocking wait), the slow one would time out.
    source = """
        import asyncio

        order = []
        other_ran = asyncio.Event()

        async def connect(conn):
            if conn.id == "slow":
                order.append("slow started")
                await other_ran.wait()
                order.append("slow finished")
            else:
                order.append(f"{conn.id} ran")
                other_ran.set()
        """
    script = load_script(write_script(tmp_path, source))
    slow_conn = Connection("slow", "inbound", "203.0.113.5", 40000, "192.0.2.1", 25)
    fast_conn = Connection("fast", "inbound", "203.0.113.6", 40001, "192.0.2.1", 25)
    slow = asyncio.create_task(call_hook(script, "connect", "slow", 5.0, slow_conn))
    await asyncio.sleep(0)  # let the slow hook start and block on its event
    assert await call_hook(script, "connect", "fast", 5.0, fast_conn) is None
    assert await slow is None
    assert script.module is not None
    assert script.module.order == ["slow started", "fast ran", "slow finished"]


async def test_raised_reject_is_returned_like_a_returned_one(tmp_path: Path) -> None:
    source = """
        from mailwarden.policy.actions import Reject

        def check(address):
            if address.endswith("@bad.example"):
                raise Reject("No", code=550, enhanced="5.7.1")

        async def mail_from(conn, tx, sender):
            check(sender.address)
        """
    action = await call(
        tmp_path, source, "mail_from", connection(), Transaction("t"), Sender("x@bad.example", {})
    )
    assert isinstance(action, Reject)
    assert action.reply.encode() == b"550 5.7.1 No\r\n"


async def test_disconnect_result_is_ignored(tmp_path: Path) -> None:
    source = "async def disconnect(conn):\n    return 'anything'\n"
    assert await call(tmp_path, source, "disconnect", connection()) is None


async def test_missing_hook_means_none(tmp_path: Path) -> None:
    assert await call(tmp_path, "X = 1\n", "helo", connection(), None) is None


# --- actions check what they are given -------------------------------------------------------


@pytest.mark.parametrize(
    ("action_type", "code"), [(Reject, 451), (Reject, 250), (Defer, 550), (Defer, 250)]
)
def test_reply_actions_refuse_the_wrong_code_class(
    action_type: type[Reject | Defer], code: int
) -> None:
    with pytest.raises(ValueError, match="needs a"):
        action_type("x", code=code)


def test_enhanced_code_must_match_the_reply_code() -> None:
    with pytest.raises(ValueError, match="does not match"):
        Reject("x", code=550, enhanced="4.7.1")


@pytest.mark.parametrize(
    "fields",
    [
        {"sender": "a@example.com\r\nRCPT TO:<victim@example.org>"},
        {"sender": "no-domain"},
        {"recipient": "bad address@example.com"},
        {"recipient": ""},
    ],
)
def test_accept_refuses_rewrites_that_are_not_mailboxes(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Accept(**fields)


def test_accept_allows_null_sender_postmaster_and_utf8_rewrites() -> None:
    assert Accept(sender="").sender == ""
    assert Accept(recipient="Postmaster").recipient == "Postmaster"
    assert Accept(recipient="jörg@exämple.com").recipient == "jörg@exämple.com"
