"""Configuration loading: defaults, the example file, and located error messages."""

from __future__ import annotations

import ipaddress
import os
import re
import textwrap
from pathlib import Path

import platformdirs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mailwarden.config import (
    Config,
    ConfigError,
    LimitSettings,
    NodeSettings,
    ServerSettings,
    SpoolSettings,
    default_config,
    format_listen_address,
    load_config,
    parse_listen_address,
)
from mailwarden.config.locations import key_lines
from mailwarden.smtp.protocol import BareLineEndings, ProtocolSettings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "mailwarden.toml"
DOCS = REPO / "docs" / "configuration.md"


def write(tmp_path: Path, text: str, name: str = "mailwarden.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[tuple[int | None, str, str]]:
    """Load ``path`` expecting failure; return (line, key, message) per problem."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    assert str(err) == "\n".join(err.problems)
    parsed = []
    for problem in err.problems:
        match = re.fullmatch(
            rf"{re.escape(str(path))}(?::(\d+))?(?::\d+)?: (?:([\w.\[\]]+): )?(.*)", problem
        )
        assert match, problem
        line = int(match[1]) if match[1] else None
        parsed.append((line, match[2] or "", match[3]))
    return parsed


def two_servers(first: str, second: str) -> str:
    first_table = f'[[servers]]\nid = "a"\nlisten = ["{first}"]\n\n'
    return first_table + f'[[servers]]\nid = "b"\nlisten = ["{second}"]\n'


def only_problem(path: Path) -> tuple[int | None, str, str]:
    found = problems_of(path)
    assert len(found) == 1, found
    return found[0]


# -- defaults and valid files ---------------------------------------------------------------


def expected_default_data_dir() -> Path:
    """What the default data directory is for whoever runs the tests (tests/cli runs both)."""
    if os.geteuid() == 0:
        return Path("/var/lib/mailwarden")
    return Path(platformdirs.user_data_dir("mailwarden"))


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILWARDEN_DATA_DIR", raising=False)
    for working_directory in (tmp_path, tmp_path.parent):  # the same wherever it is started
        monkeypatch.chdir(working_directory)
        for config in (load_config(None), default_config()):
            assert config.node.data_dir == expected_default_data_dir()
            assert config.spool.path == expected_default_data_dir() / "spool"
    for config in (load_config(None), default_config()):
        assert config.source is None
        assert config.node.workers == 0  # one worker per core (issue 10 §3)
        assert config.node.log_level == "info"
        assert config.spool.fsync is True
        [server] = config.servers
        assert server.addresses == [("127.0.0.1", 2525)]
        assert server.local_domains == ["localhost"]
        assert server.tls_certificate is None
        settings = server.protocol_settings(config.node.hostname)
        assert settings == ProtocolSettings(hostname=config.node.hostname)


def test_data_dir_environment_variable_overrides_only_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILWARDEN_DATA_DIR", "state")
    assert default_config().node.data_dir == tmp_path / "state"
    assert default_config().spool.path == tmp_path / "state" / "spool"
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(conf_dir, '[node]\ndata_dir = "data"\n')
    assert load_config(path).node.data_dir == conf_dir / "data"
    assert load_config(path).spool.path == conf_dir / "data" / "spool"


def test_full_file_loads_with_paths_relative_to_it(tmp_path):
    path = write(
        tmp_path,
        """
        [node]
        data_dir = "state"
        workers = 0
        log_level = "debug"
        shutdown_grace = 5
        hostname = "mx.example.com"

        [spool]
        path = "/srv/spool"
        memory_threshold = 0
        group_commit_max_batch = 64
        fsync = false

        [[servers]]
        id = "inbound"
        listen = ["0.0.0.0:25", "[::]:25"]
        script = "policy/inbound.py"
        local_domains = ["Example.COM"]
        trusted_networks = ["10.0.0.0/8", "2001:db8::/32"]
        tls_certificate = "tls/cert.pem"
        tls_key = "tls/key.pem"
        auth_mechanisms = ["LOGIN"]
        auth_requires_tls = false
        bare_line_endings = "keep"
        reject_early_talkers = false
        greeting_banner = "ready"

        [servers.limits]
        command_line = 1024
        recipients = 50
        message_size = 1000000
        auth_failures = 5
        command_timeout = 60

        [[servers]]
        id = "submission"
        hostname = "smtp.example.com"
        listen = ["127.0.0.1:587"]
        limits = { recipients = 10 }
        """,
    )
    config = load_config(path)
    assert config.source == path
    assert config.node.data_dir == tmp_path / "state"
    assert config.node.worker_count >= 1
    assert config.node.shutdown_grace == 5.0
    assert config.spool.path == Path("/srv/spool")
    assert config.spool.fsync is False
    inbound, submission = config.servers
    assert config.server("submission") is submission
    assert inbound.addresses == [("0.0.0.0", 25), ("::", 25)]
    assert inbound.script == tmp_path / "policy" / "inbound.py"
    assert inbound.tls_key == tmp_path / "tls" / "key.pem"
    assert inbound.local_domains == ["example.com"]
    assert inbound.networks == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    ]
    settings = inbound.protocol_settings(config.node.hostname)
    assert settings.hostname == "mx.example.com"
    assert settings.tls_available is True
    assert settings.max_command_line == 1024
    assert settings.max_recipients == 50
    assert settings.max_message_size == 1000000
    assert settings.max_auth_failures == 5
    assert settings.auth_mechanisms == ("LOGIN",)
    assert settings.auth_requires_tls is False
    assert settings.bare_line_endings is BareLineEndings.KEEP
    assert settings.reject_early_talkers is False
    assert inbound.limits.command_timeout == 60.0
    assert submission.protocol_settings("node.example").hostname == "smtp.example.com"
    assert submission.limits.recipients == 10
    assert submission.tls_certificate is None
    with pytest.raises(KeyError):
        config.server("nope")


def test_example_file_loads():
    config = load_config(EXAMPLE)
    assert [server.id for server in config.servers] == ["inbound", "submission"]
    assert config.servers[0].auth_mechanisms == []


def test_docs_describe_every_key():
    docs = DOCS.read_text(encoding="utf-8")
    for header in ("## `[node]`", "## `[spool]`", "## `[[servers]]`", "## `[servers.limits]`"):
        assert header in docs
    for model in (NodeSettings, SpoolSettings, ServerSettings, LimitSettings):
        for key in model.model_fields:
            assert f"| `{key}` |" in docs, f"{model.__name__}.{key} is not documented"
    assert "```toml" in docs


def test_configs_can_be_built_in_code_and_are_frozen():
    server = ServerSettings(id="test", listen=["127.0.0.1:0"])
    config = Config(servers=[server])
    with pytest.raises(ValidationError):
        config.servers[0].id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ServerSettings(id="t", tls_certificate=Path("c.pem"))
    with pytest.raises(ValidationError):
        Config(servers=[server, server])


# -- file-level errors ----------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    line, _, message = only_problem(path)
    assert line is None
    assert "cannot read the configuration file" in message
    assert "No such file" in message


def test_directory_instead_of_file(tmp_path):
    line, _, message = only_problem(tmp_path)
    assert line is None and "cannot read" in message


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "mailwarden.toml"
    path.write_bytes(b'[node]\nlog_level = "info"\nhostname = "\xff"\n')
    line, _, message = only_problem(path)
    assert line == 3 and "UTF-8" in message


def test_syntax_error_reports_line_and_column(tmp_path):
    path = write(tmp_path, '[node]\nworkers = 2\nlog_level = = "info"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}:3:13: invalid TOML")


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ('[node]\nworkers = 2\nlog_level = """info\n', 3, "Unterminated string"),
        (
            "[node]\nworkers = 2\n\n[[servers]]\nid = 'a'\nlisten = [\n  '127.0.0.1:25',\n\n",
            7,
            "Invalid value",
        ),
        ("[node]\nworkers =", 2, "Invalid value"),
    ],
    ids=["unterminated-string", "open-array-then-blank-lines", "no-final-newline"],
)
def test_syntax_error_at_the_end_of_the_file_names_the_last_line(tmp_path, text, line, what):
    path = tmp_path / "mailwarden.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem == f"{path}:{line}: invalid TOML: {what} at the end of the file"


def test_duplicate_key_is_a_syntax_error(tmp_path):
    path = write(tmp_path, "[node]\nworkers = 2\n\nworkers = 3\n")
    line, _, message = only_problem(path)
    assert line == 4 and "invalid TOML" in message


# -- schema errors, each naming the line and the key ----------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "expected"),
    [
        ("[node]\nworkers = 1\n\nverbose = true\n", 4, "node.verbose", "data_dir, workers"),
        ("sources = 1\n", 1, "sources", "node, spool, servers"),
        ("source = '/etc'\n", 1, "source", "node, spool, servers"),
        ("[nodes]\nworkers = 1\n", 1, "nodes", "node, spool, servers"),
        (
            '[[servers]]\nid = "a"\n[servers.limits]\nrecipients = 5\nrecipient = 6\n',
            5,
            "servers[0].limits.recipient",
            "command_line, text_line",
        ),
        (
            '[[servers]]\nid = "a"\n[[servers]]\nid = "b"\nlimits = { errors = 3, eror = 4 }\n',
            5,
            "servers[1].limits.eror",
            "errors",
        ),
        ('[[servers]]\nid = "a"\n[servers.tls]\ncert = "x"\n', 3, "servers[0].tls", "tls_key"),
    ],
)
def test_unknown_keys(tmp_path, text, line, key, expected):
    got_line, got_key, message = only_problem(write(tmp_path, text))
    assert (got_line, got_key) == (line, key)
    assert message.startswith("unknown key; expected one of: ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (
            '[node]\nworkers = "2"\n',
            2,
            "node.workers",
            "expected an integer from 0 to 1024, got '2'",
        ),
        ("[node]\nworkers = true\n", 2, "node.workers", "got true"),
        ("[node]\nworkers = 2.5\n", 2, "node.workers", "expected an integer"),
        ('[node]\nlog_level = "loud"\n', 2, "node.log_level", "one of 'debug', 'info'"),
        ('[spool]\nfsync = "no"\n', 2, "spool.fsync", "expected true or false, got 'no'"),
        ("[spool]\npath = 3\n", 2, "spool.path", "expected a path (string), got 3"),
        ('node = "x"\n', 1, "node", "expected a table"),
        (
            '[[servers]]\nid = "a"\nlisten = "127.0.0.1:25"\n',
            3,
            "servers[0].listen",
            "expected an array of strings",
        ),
        (
            '[[servers]]\nid = "a"\n\n[servers.limits]\nrecipients = "lots"\n',
            5,
            "servers[0].limits.recipients",
            "expected an integer >= 1, got 'lots'",
        ),
        (
            '[[servers]]\nid = "a"\nlimits.data_timeout = "soon"\n',
            3,
            "servers[0].limits.data_timeout",
            "expected a number > 0",
        ),
    ],
)
def test_wrong_types(tmp_path, text, line, key, message):
    got_line, got_key, got_message = only_problem(write(tmp_path, text))
    assert (got_line, got_key) == (line, key)
    assert message in got_message


@pytest.mark.parametrize(
    ("limit", "value", "expected"),
    [
        ("recipients", "0", "expected an integer >= 1, got 0"),
        ("message_size", "-5", "expected an integer >= 1, got -5"),
        ("connections_per_ip", "0", ">= 1"),
        ("command_timeout", "0", "expected a number > 0, got 0"),
        ("hook_timeout", "-1.5", "> 0"),
        ("data_timeout", "nan", "finite"),
        # RFC 5321 §4.5.3.1 minimums: may be raised, never lowered.
        ("command_line", "511", "expected an integer >= 512, got 511"),
        ("text_line", "998", "expected an integer >= 1000, got 998"),
        ("local_part", "10", ">= 64"),
        ("domain", "254", ">= 255"),
        ("path", "100", ">= 256"),
    ],
)
def test_limits_out_of_range(tmp_path, limit, value, expected):
    text = '# listeners\n[[servers]]\nid = "mx"\n\n[servers.limits]\nerrors = 5\n'
    text += f"{limit} = {value}\n"
    got_line, got_key, message = only_problem(write(tmp_path, text))
    assert (got_line, got_key) == (7, f"servers[0].limits.{limit}")
    assert expected in message


def test_several_problems_are_all_reported_in_line_order(tmp_path):
    path = write(
        tmp_path,
        """
        [[servers]]
        id = "a"
        limits.recipients = 0

        [node]
        workers = -1
        shutdown_grace = "long"
        """,
    )
    found = problems_of(path)
    assert [(line, key) for line, key, _ in found] == [
        (3, "servers[0].limits.recipients"),
        (6, "node.workers"),
        (7, "node.shutdown_grace"),
    ]


def test_bad_cidr(tmp_path):
    path = write(
        tmp_path,
        """
        [[servers]]
        id = "a"
        trusted_networks = [
            "10.0.0.0/8",
            "192.168.1.1/24",
            "not-a-network",
        ]
        """,
    )
    found = problems_of(path)
    assert [(line, key) for line, key, _ in found] == [
        (5, "servers[0].trusted_networks[1]"),
        (6, "servers[0].trusted_networks[2]"),
    ]
    assert "did you mean '192.168.1.0/24'" in found[0][2]
    assert "CIDR" in found[1][2]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "port is missing"),
        ("::1:25", "brackets"),
        ("[::1]25", "':port'"),
        ("[::1:25", "']'"),
        ("[127.0.0.1]:25", "not an IPv6 address"),
        ("256.1.1.1:25", "not an IPv4 address"),
        ("127.0.0.1:65536", "0 to 65535"),
        ("127.0.0.1:-1", "0 to 65535"),
        (":25", "host is missing"),
        ("bad_host!:25", "neither an IP address nor a host name"),
    ],
)
def test_bad_listen_address(tmp_path, address, reason):
    text = f'[[servers]]\nid = "a"\nlisten = ["127.0.0.1:2525",\n  "{address}"]\n'
    line, key, message = only_problem(write(tmp_path, text))
    assert (line, key) == (4, "servers[0].listen[1]")
    assert reason in message and repr(address) in message


def test_empty_listen_list(tmp_path):
    line, key, message = only_problem(write(tmp_path, '[[servers]]\nid = "a"\nlisten = []\n'))
    assert (line, key) == (3, "servers[0].listen")
    assert "at least 1" in message


@pytest.mark.parametrize(
    ("present", "missing"), [("tls_certificate", "tls_key"), ("tls_key", "tls_certificate")]
)
def test_tls_certificate_and_key_go_together(tmp_path, present, missing):
    text = f'[[servers]]\nid = "a"\nlisten = ["127.0.0.1:25"]\n{present} = "x.pem"\n'
    line, key, message = only_problem(write(tmp_path, text))
    assert (line, key) == (4, f"servers[0].{present}")
    assert missing in message


def test_duplicate_server_ids(tmp_path):
    path = write(
        tmp_path,
        """
        [[servers]]
        id = "mx"
        listen = ["127.0.0.1:25"]

        [[servers]]
        id = "submission"
        listen = ["127.0.0.1:587"]

        [[servers]]
        listen = ["127.0.0.1:465"]
        id = "mx"
        """,
    )
    line, key, message = only_problem(path)
    assert (line, key) == (11, "servers[2].id")
    assert "unique" in message and "servers[0].id" in message


def test_missing_server_id_points_at_its_table(tmp_path):
    path = write(tmp_path, '[[servers]]\nid = "a"\n\n[[servers]]\nlisten = ["127.0.0.1:26"]\n')
    line, key, message = only_problem(path)
    assert (line, key) == (4, "servers[1].id")
    assert "required key is missing" in message


def test_bad_server_id(tmp_path):
    line, key, message = only_problem(write(tmp_path, '[[servers]]\nid = "Inbound MX"\n'))
    assert (line, key) == (2, "servers[0].id")
    assert "'Inbound MX'" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:25", "127.0.0.1:25"),
        ("0.0.0.0:25", "127.0.0.1:25"),
        ("[::1]:25", "[::]:25"),
        ("[0::1]:25", "[::1]:25"),
        ("localhost:25", "LOCALHOST:25"),
    ],
)
def test_servers_listening_on_the_same_address(tmp_path, first, second):
    text = two_servers(first, second)
    line, key, message = only_problem(write(tmp_path, text))
    assert (line, key) == (7, "servers[1].listen[0]")
    assert "overlaps servers[0].listen[0]" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [("127.0.0.1:25", "127.0.0.1:26"), ("0.0.0.0:25", "[::]:25"), ("127.0.0.1:0", "127.0.0.1:0")],
)
def test_distinct_addresses_are_accepted(tmp_path, first, second):
    text = two_servers(first, second)
    assert len(load_config(write(tmp_path, text)).servers) == 2


def test_other_value_checks(tmp_path):
    path = write(
        tmp_path,
        """
        [node]
        hostname = "not a host"

        [[servers]]
        id = "a"
        local_domains = ["example.com", "exa mple.org"]
        auth_mechanisms = ["PLAIN", "CRAM-MD5"]
        bare_line_endings = "strip"
        greeting_banner = "hello\\r\\n250 injected"
        """,
    )
    found = problems_of(path)
    assert [(line, key) for line, key, _ in found] == [
        (2, "node.hostname"),
        (6, "servers[0].local_domains[1]"),
        (7, "servers[0].auth_mechanisms[1]"),
        (8, "servers[0].bare_line_endings"),
        (9, "servers[0].greeting_banner"),
    ]
    assert "'reject', 'keep'" in found[3][2]


def test_repeated_auth_mechanism(tmp_path):
    text = '[[servers]]\nid = "a"\nauth_mechanisms = ["PLAIN", "PLAIN"]\n'
    line, key, _ = only_problem(write(tmp_path, text))
    assert (line, key) == (3, "servers[0].auth_mechanisms")


# -- files named by the configuration ---------------------------------------------------------


def test_check_files_names_missing_files_with_their_lines(tmp_path):
    (tmp_path / "cert.pem").write_text("cert")
    path = write(
        tmp_path,
        """
        [[servers]]
        id = "a"
        script = "policy.py"
        tls_certificate = "cert.pem"
        tls_key = "key.pem"
        """,
    )
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        config.check_files()
    assert caught.value.problems == [
        f"{path}:3: servers[0].script: expected a readable file, but "
        f"{tmp_path / 'policy.py'} does not exist",
        f"{path}:5: servers[0].tls_key: expected a readable file, but "
        f"{tmp_path / 'key.pem'} does not exist",
    ]
    with pytest.raises(ConfigError, match=r"servers\[a\]\.script"):
        config.servers[0].check_files()
    (tmp_path / "policy.py").write_text("")
    (tmp_path / "key.pem").write_text("key")
    config.check_files()
    config.servers[0].check_files()


# -- the key-line scanner ---------------------------------------------------------------------


def test_key_lines_follow_arrays_of_tables_and_multiline_values():
    text = textwrap.dedent(
        '''
        # comment with key = "value"
        [node]
        "quoted.key" = """
        not_a_key = 1
        """
        [[servers]]
        id = "a"  # trailing [comment]
        listen = [
          "x",  # one
          'y',
        ]
        [servers.limits]
        errors = 3
        [[servers]]
        limits.recipients = 4
        inline = { a = 1, b.c = [1, 2] }
        '''
    ).lstrip("\n")
    lines = key_lines(text)
    assert lines[("node",)] == 2
    assert lines[("node", "quoted.key")] == 3
    assert ("node", "not_a_key") not in lines
    assert lines[("servers", 0)] == 6
    assert lines[("servers", 0, "listen", 0)] == 9
    assert lines[("servers", 0, "listen", 1)] == 10
    assert lines[("servers", 0, "limits", "errors")] == 13
    assert lines[("servers", 1)] == 14
    assert lines[("servers", 1, "limits", "recipients")] == 15
    assert lines[("servers", 1, "inline", "b", "c", 1)] == 16


# -- the listen-address parser (property-based) -----------------------------------------------

ports = st.integers(min_value=0, max_value=65535)


@given(st.ip_addresses(v=4), ports)
def test_ipv4_listen_addresses_round_trip(address, port):
    assert parse_listen_address(f"{address}:{port}") == (str(address), port)
    assert format_listen_address(str(address), port) == f"{address}:{port}"


@given(st.ip_addresses(v=6), ports)
def test_ipv6_listen_addresses_round_trip(address, port):
    text = f"[{address.exploded}]:{port}"
    assert parse_listen_address(text) == (str(address), port)
    assert parse_listen_address(format_listen_address(str(address), port)) == (str(address), port)


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@given(st.lists(labels, min_size=1, max_size=4), ports)
def test_host_name_listen_addresses(parts, port):
    name = ".".join(parts)
    if re.fullmatch(r"[0-9.]+", name):
        return  # all digits: read as an IPv4 address, covered above
    assert parse_listen_address(f"{name.upper()}:{port}") == (name, port)


@given(st.ip_addresses(), st.integers(min_value=65536, max_value=10**12))
def test_out_of_range_ports_are_rejected(address, port):
    with pytest.raises(ValueError, match="0 to 65535"):
        parse_listen_address(format_listen_address(str(address), port))


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_value_error(text):
    try:
        host, port = parse_listen_address(text)
    except ValueError as err:
        assert str(err)
    else:
        assert 0 <= port <= 65535
        assert host
        assert parse_listen_address(format_listen_address(host, port)) == (host, port)
