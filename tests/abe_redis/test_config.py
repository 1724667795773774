from __future__ import annotations

import logging

import pytest

from abe_redis import ConfigurationError, RedisConfig, RedisStreamsBackend
from abe_redis._config import ENVIRONMENT

from .helpers import own_keys

SECRET = "s3cr3t-pa55"


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        ("REDIS_MAX_CONNECTIONS", "abc", "expected an integer"),
        ("REDIS_MAX_CONNECTIONS", "0", "positive integer"),
        ("REDIS_STREAM_MAXLEN", "-5", "positive integer"),
        ("REDIS_STREAM_MAXLEN", "lots", "expected an integer"),
        ("REDIS_SSL", "maybe", "expected true/false"),
        ("REDIS_POOL_TIMEOUT", "-1", "positive number of seconds"),
        ("REDIS_SOCKET_TIMEOUT", "soon", "expected a number"),
        ("REDIS_SOCKET_CONNECT_TIMEOUT", "0", "positive number of seconds"),
        ("REDIS_RETRY_ATTEMPTS", "-1", "non-negative"),
        ("REDIS_CLAIM_IDLE_MS", "-100", "non-negative"),
        ("REDIS_CLAIM_INTERVAL_MS", "0", "positive integer"),
        ("REDIS_MAX_DELIVERIES", "0", "positive integer"),
        ("REDIS_BLOCK_MS", "0", "positive integer"),
        ("REDIS_BATCH_SIZE", "x", "expected an integer"),
        ("REDIS_DISCOVERY_INTERVAL_MS", "-1", "positive integer"),
        ("REDIS_CONSUME_MODE", "fanout", "expected one of group, broadcast"),
        ("REDIS_GROUP_START_ID", "latest", "expected '0'"),
        ("REDIS_SSL_CERT_REQS", "sometimes", "expected one of required"),
        ("REDIS_URL", "http://localhost:6379", "unknown scheme 'http'"),
        ("REDIS_URL", "redis://localhost:port/0", "not a valid URL"),
    ],
)
def test_bad_environment_value_names_variable_and_value(var: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisConfig.from_env({var: value})
    message = str(caught.value)
    assert var in message
    assert value in message
    assert problem in message
    assert isinstance(caught.value, ValueError)


def test_socket_timeout_must_exceed_block_time() -> None:
    with pytest.raises(ConfigurationError, match=r"REDIS_SOCKET_TIMEOUT.*larger than the blocking read"):
        RedisConfig.from_env({"REDIS_SOCKET_TIMEOUT": "1", "REDIS_BLOCK_MS": "2000"})
    assert RedisConfig(block_ms=2000).effective_socket_timeout > 2.0


def test_password_never_shown_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://user:{SECRET}@localhost:6379/0"
    with pytest.raises(ConfigurationError) as caught:
        RedisConfig.from_env({"REDIS_URL": url, "REDIS_MAX_CONNECTIONS": "-1"})
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught_url:
        RedisConfig.from_env({"REDIS_URL": f"ftp://user:{SECRET}@host"})
    assert SECRET not in str(caught_url.value)
    assert "***" in str(caught_url.value)

    config = RedisConfig.from_env({"REDIS_URL": url, "REDIS_PASSWORD": SECRET})
    backend = RedisStreamsBackend(config)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("abe_redis").info("config %r backend %r", config, backend)
    for text in (repr(config), str(config), repr(backend), caplog.text):
        assert SECRET not in text
    assert "***" in repr(config)


def test_password_only_url_is_redacted() -> None:
    assert SECRET not in repr(RedisConfig(url=f"redis://{SECRET}@localhost/0"))
    assert SECRET not in repr(RedisConfig(url=f"redis://localhost/0?password={SECRET}"))


def test_environment_names_of_the_older_package_are_kept() -> None:
    env = {
        "REDIS_URL": "rediss://cache.example:6380/2",
        "REDIS_PASSWORD": "pw",
        "REDIS_SSL": "true",
        "REDIS_MAX_CONNECTIONS": "25",
        "REDIS_STREAM_MAXLEN": "10000",
    }
    config = RedisConfig.from_env(env)
    assert config.url == env["REDIS_URL"]
    assert config.password == "pw"
    assert config.use_ssl is True
    assert config.max_connections == 25
    assert config.stream_maxlen == 10000


def test_every_field_has_an_environment_variable_and_parses() -> None:
    env = {
        "REDIS_STREAMS": "a, b ,,c",
        "REDIS_STREAM_PATTERN": "orders:*",
        "REDIS_CONSUMER_GROUP": "workers",
        "REDIS_CONSUMER_NAME": "worker-1",
        "REDIS_GROUP_START_ID": "$",
        "REDIS_CONSUME_MODE": "broadcast",
        "REDIS_CLAIM_IDLE_MS": "1500",
        "REDIS_MAX_DELIVERIES": "3",
        "REDIS_DEAD_LETTER_SUFFIX": ":dlq",
        "REDIS_BLOCK_MS": "250",
        "REDIS_BATCH_SIZE": "7",
    }
    config = RedisConfig.from_env(env)
    assert config.streams == ("a", "b", "c")
    assert config.stream_pattern == "orders:*"
    assert (config.consumer_group, config.consumer_name, config.group_start_id) == (
        "workers",
        "worker-1",
        "$",
    )
    assert config.mode == "broadcast"
    assert (config.claim_idle_ms, config.max_deliveries, config.block_ms, config.batch_size) == (
        1500,
        3,
        250,
        7,
    )
    assert config.dead_letter_stream("x") == "x:dlq"
    assert {var for var, _ in ENVIRONMENT.values()} >= set(env)


def test_from_url_and_keyword_overrides() -> None:
    config = RedisConfig.from_url("redis://h:1/3", max_connections=3)
    assert (config.url, config.max_connections) == ("redis://h:1/3", 3)
    assert RedisConfig.from_env({"REDIS_MAX_CONNECTIONS": "9"}, max_connections=4).max_connections == 4
    with pytest.raises(ConfigurationError, match="max_connections"):
        RedisStreamsBackend.from_url("redis://h/0", max_connections=-2)


def test_empty_environment_gives_defaults() -> None:
    assert RedisConfig.from_env({}) == RedisConfig()


def test_urls_inside_messages_are_redacted() -> None:
    from abe_redis._redact import redact_text

    text = f"Error connecting to redis://app:{SECRET}@cache:6379/0, then 'rediss://{SECRET}@other'"
    cleaned = redact_text(text, (SECRET,))
    assert SECRET not in cleaned
    assert "redis://app:***@cache:6379/0" in cleaned
    assert redact_text(f"token {SECRET} leaked", (SECRET,)) == "token *** leaked"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h/abc", "must be a database number"),
        ("redis:/x", "no host in the URL"),
        ("redis://", "no host in the URL"),
        ("unix://", "needs the socket's path"),
    ],
)
def test_malformed_urls_are_refused_instead_of_silently_defaulting(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        RedisConfig(url=url)


def test_unix_and_database_urls_are_accepted() -> None:
    assert RedisConfig(url="unix:///run/redis.sock").url == "unix:///run/redis.sock"
    assert RedisConfig(url="redis://h:6380/3").url == "redis://h:6380/3"


def test_every_backend_key_lives_under_the_key_prefix() -> None:
    config = RedisConfig(key_prefix="app:abe:")
    assert all(key.startswith("app:abe:") for key in own_keys(config.keys))
    assert config.with_overrides(key_prefix="other:").registry_key == "other:streams"
    assert RedisConfig(registry_key="mine").with_overrides(key_prefix="x:").registry_key == "mine"


async def test_publish_after_aclose_is_refused() -> None:
    from abe_redis import BackendClosedError

    backend = RedisStreamsBackend(RedisConfig(url="redis://127.0.0.1:1/0"))
    await backend.aclose()
    with pytest.raises(BackendClosedError):
        await backend.publish("k", {"n": 1})
    with pytest.raises(BackendClosedError):
        backend.consume()


def test_no_url_is_refused_rather_than_guessing_localhost() -> None:
    """A server nobody named may belong to someone else: without REDIS_URL there is no backend."""
    with pytest.raises(ConfigurationError, match=r"REDIS_URL.*not set.*never falls back to localhost"):
        RedisStreamsBackend.from_env({})
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        RedisStreamsBackend()
