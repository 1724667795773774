"""The ``abe-redis`` command as a user meets it: exit codes, one-line errors, literal output."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from abe_redis import __version__
from abe_redis.cli import build_parser, main
from abe_redis_testing.servers import RedisEndpoint

CLI = [sys.executable, "-m", "abe_redis.cli"]


@pytest.fixture
def client(redis_server: RedisEndpoint) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.flushall()
    client.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "REDIS_RETRY_ATTEMPTS": "0", **(env or {})},
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in expected:
        assert part in lines[0]


# -- basics ------------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"abe-redis {__version__}"


def _every_parser(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _every_parser(child)


def test_every_subcommand_and_action_has_help_with_defaults_shown() -> None:
    parsers = dict(_every_parser(build_parser()))
    assert {"abe-redis verify", "abe-redis info", "abe-redis tail", "abe-redis dlq list"} <= set(parsers)
    for prog, parser in parsers.items():
        assert parser.description, f"{prog} has no description"
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{prog} {action.option_strings} has no help"
    assert "(default: 1000)" in parsers["abe-redis verify"].format_help()
    assert "(default: 20)" in parsers["abe-redis dlq list"].format_help()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dlq", "keys", "--url", "notaurl"], "REDIS_URL"),
        (["info", "--url", "redis://h:notaport/0"], "REDIS_URL"),
        (["verify", "--backend", "no_such_module:Backend"], "no_such_module"),
        (["verify", "--backend", "not-a-spec"], "package.module:Class"),
        (["verify", "--backend", "abe_redis:RedisStreamsBackend"], "needs --url or REDIS_URL"),
        (
            [
                "verify",
                "--backend",
                "abe_redis:RedisStreamsBackend",
                "--url",
                "redis://h/0",
                "--capabilities",
                "flies",
            ],
            "unknown capability 'flies'",
        ),
        (["info"], "needs --url or REDIS_URL"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(args: list[str], expected: str) -> None:
    assert_one_line_error(run_cli(*args), expected)


def test_a_configuration_error_from_the_environment_is_one_line() -> None:
    result = run_cli("info", "--url", "redis://127.0.0.1:1/0", env={"REDIS_BLOCK_MS": "soon"})
    assert_one_line_error(result, "REDIS_BLOCK_MS", "soon")


def test_unreachable_server_is_one_line_without_the_password() -> None:
    result = run_cli("verify", "--url", "redis://:hunter2@127.0.0.1:1/0", "--timeout", "2")
    assert_one_line_error(result, "ConnectionError", "127.0.0.1:1")
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # RedisClusterException is not a RedisError: it used to escape as a traceback.
        ("redis+cluster://:hunter2@127.0.0.1:1", "RedisClusterException"),
        # MasterNotFoundError's text carries the sentinel client's repr; only its first clause stays.
        ("redis+sentinel://:hunter2@127.0.0.1:1/orders-master", "No master found for 'orders-master'"),
    ],
)
def test_unreachable_cluster_or_sentinel_is_one_short_line(url: str, expected: str) -> None:
    result = run_cli("info", "--url", url)
    assert_one_line_error(result, expected)
    assert "hunter2" not in result.stdout + result.stderr
    assert "<redis." not in result.stderr and len(result.stderr) < 300, result.stderr


# -- verify ------------------------------------------------------------------------------------


def test_verify_on_the_embedded_fake_passes_without_warnings(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["verify", "--count", "200", "--keys", "3"]) == 0
    out = capsys.readouterr().out
    assert "verify: PASS" in out
    assert "200 published to 3 keys, 200 delivered" in out
    assert "0 lost, 0 duplicates" in out
    assert "FakeRedisStreamsBackend: 35 passed, 0 failed, 0 skipped" in out
    # Parameter ids are shown (not swallowed as markup), one row per case.
    assert "test_invalid_payload_rejected[bytes_value]" in out
    assert "test_invalid_key_rejected[empty]" in out
    assert "contract: PASS" in out
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_verify_backend_groups_skips_by_capability(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    spec = "abe.backends.message_queue.service.memory:MemoryBackend"
    assert main(["verify", "--backend", spec, "--contract-timeout", "2"]) == 0
    out = capsys.readouterr().out
    assert "contract: PASS" in out
    assert out.count("capability `supports_groups` not declared") == 1
    assert "test_invalid_payload_rejected (13 cases)" in out


def test_verify_capabilities_option_claims_for_a_class_one_cannot_annotate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    spec = "abe.backends.message_queue.service.memory:MemoryBackend"
    # The memory backend does not validate keys: claiming it must make those tests run and fail.
    assert main(["verify", "--backend", spec, "--capabilities", "rejects_invalid_keys"]) == 1
    out = capsys.readouterr().out
    assert "contract: FAIL" in out
    assert "test_invalid_key_rejected[" in out


def test_verify_backend_fails_a_backend_that_breaks_its_claims(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tests.abe_redis.broken_backend:UnvalidatingMemoryBackend"
    assert main(["verify", "--backend", spec, "--contract-timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "contract: FAIL" in out
    assert " 0 failed" not in out


# -- dlq ---------------------------------------------------------------------------------------


def _dead_letter(client: redis.Redis, key: str, reason: str, payload: bytes) -> str:
    entry_id = client.xadd(
        f"{key}:dead-letter",
        {"reason": reason, "source_stream": key, "source_id": "1-1", "field:payload": payload},
    )
    return entry_id.decode()


def test_dlq_accepts_options_anywhere_and_prints_ids_in_full(
    client: redis.Redis,
    redis_server: RedisEndpoint,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "50")  # a narrow terminal must not cut IDs
    entry_id = _dead_letter(client, "payments", "poison", b"{}")
    for argv in (
        ["dlq", "list", "--url", redis_server.url, "payments"],
        ["dlq", "--url", redis_server.url, "list", "payments"],
        ["dlq", "list", "payments", "--url", redis_server.url],
    ):
        assert main(argv) == 0
        assert entry_id in capsys.readouterr().out


def test_dlq_list_prints_data_literally_never_as_markup(
    client: redis.Redis,
    redis_server: RedisEndpoint,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    _dead_letter(client, "payments", "poison [/oops] [bold]x", b'{"a": "[/oops]"}')
    assert main(["dlq", "list", "payments", "--url", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "poison [/oops] [bold]x" in out
    assert """payload=b'{"a": "[/oops]"}'""" in out


def test_dlq_keys_and_empty_results_say_so(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "keys", "--url", redis_server.url]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no dead letters" in captured.err
    assert main(["dlq", "list", "orders", "--url", redis_server.url]) == 0
    assert "no dead letters for orders" in capsys.readouterr().out
    assert main(["dlq", "replay", "orders", "--url", redis_server.url]) == 0
    assert "no dead letters of orders to replay" in capsys.readouterr().out
    assert main(["dlq", "purge", "orders", "--url", redis_server.url]) == 0
    assert "no dead letters of orders to purge" in capsys.readouterr().out


@pytest.mark.parametrize("verb", ["replay", "purge"])
def test_dlq_replay_or_purge_of_an_unknown_id_fails_and_applies_nothing(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    known = _dead_letter(client, "orders", "poison", b"{}")
    status = main(["dlq", verb, "orders", "--url", redis_server.url, "--id", known, "--id", "9-9"])
    assert status == 2
    err = capsys.readouterr().err
    assert "9-9" in err and f"nothing {verb.rstrip('e')}ed" in err
    assert client.xlen("orders:dead-letter") == 1 and not client.exists("orders")


def test_dlq_commands_round_trip(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _dead_letter(client, "orders", "poison", b"{}")
    _dead_letter(client, "orders", "poison", b'{"n": 2}')
    assert main(["dlq", "keys", "--url", redis_server.url]) == 0
    assert capsys.readouterr().out == "orders\t2\n"
    assert main(["dlq", "replay", "orders", "--url", redis_server.url, "--id", first]) == 0
    assert "replayed 1 dead letter(s) of orders" in capsys.readouterr().out
    assert client.xlen("orders") == 1 and client.xlen("orders:dead-letter") == 1
    assert main(["dlq", "purge", "orders", "--url", redis_server.url]) == 0
    assert "purged 1 dead letter(s) of orders" in capsys.readouterr().out
    assert not client.exists("orders:dead-letter")


def test_dlq_keys_leaves_out_a_key_whose_dead_letters_were_all_replayed(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    _dead_letter(client, "orders", "poison", b"{}")
    _dead_letter(client, "payments", "poison", b"{}")
    assert main(["dlq", "replay", "orders", "--url", redis_server.url]) == 0
    assert client.xlen("orders:dead-letter") == 0  # the stream itself may be left behind, empty
    capsys.readouterr()
    assert main(["dlq", "keys", "--url", redis_server.url]) == 0
    assert capsys.readouterr().out == "payments\t1\n"
    assert main(["dlq", "replay", "payments", "--url", redis_server.url]) == 0
    capsys.readouterr()
    assert main(["dlq", "keys", "--url", redis_server.url]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no dead letters" in captured.err


# -- info and tail -----------------------------------------------------------------------------


def test_info_shows_streams_groups_pending_lag_and_dead_letters(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    client.sadd("abe-redis:streams", "orders", "gone")
    for n in range(3):
        client.xadd("orders", {"payload": json.dumps({"n": n})})
    client.xgroup_create("orders", "workers", id="0")
    client.xreadgroup("workers", "w1", {"orders": ">"}, count=2)
    _dead_letter(client, "orders", "poison", b"{}")

    assert main(["info", "--url", redis_server.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {stream["name"]: stream for stream in data["streams"]}
    assert set(by_name) == {"orders", "gone"}
    orders = by_name["orders"]
    assert (orders["length"], orders["dead_letters"]) == (3, 1)
    [group] = orders["groups"]
    assert (group["name"], group["pending"], group["lag"]) == ("workers", 2, 1)
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [("w1", 2)]
    assert by_name["gone"]["exists"] is False

    assert main(["info", "--url", redis_server.url]) == 0
    table = capsys.readouterr().out
    assert "orders" in table and "workers" in table and "missing" in table


def test_info_on_an_empty_server_says_so(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--url", redis_server.url]) == 0
    assert "no streams found" in capsys.readouterr().out


def test_tail_prints_the_backlog_from_an_id(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    first = client.xadd("orders", {"payload": b'{"id": 1, "note": "[/oops]"}'}).decode()
    client.xadd("orders", {"payload": b"{not json"})
    assert main(["tail", "orders", "--url", redis_server.url, "--from", "0", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f'{first}\t{{"id": 1, "note": "[/oops]"}}'
    assert lines[1].endswith("\t{not json")
    assert not client.exists("abe-redis:streams") and client.xinfo_groups("orders") == []


def test_tail_follows_new_entries_without_joining_a_group(
    client: redis.Redis, redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    client.xadd("orders", {"payload": b'{"old": true}'})
    statuses: list[int] = []
    follower = threading.Thread(
        target=lambda: statuses.append(main(["tail", "orders", "--url", redis_server.url, "--count", "1"]))
    )
    follower.start()
    # Publish only once the tail is blocked in XREAD, so "new" is unambiguous.
    deadline = time.monotonic() + 10
    while not any(c.get("cmd") == "xread" for c in client.client_list()):
        assert time.monotonic() < deadline, "tail never blocked in XREAD"
        time.sleep(0.01)
    new_id = client.xadd("orders", {"payload": b'{"new": true}'}).decode()
    follower.join(timeout=10)
    assert statuses == [0]
    assert capsys.readouterr().out == f'{new_id}\t{{"new": true}}\n'
    assert client.xinfo_groups("orders") == []
