"""The tokens file kept current, its permission warning, keepalive options, and the auth / keepalive settings."""

import logging
import os
from pathlib import Path

import pytest

from trtserve.errors import ConfigError
from trtserve.serving.security import (
    HEALTH_SERVICE,
    REFLECTION_SERVICES,
    KeepaliveSettings,
    TokenSource,
    keepalive_options,
    warn_if_readable_by_others,
)
from trtserve.serving.settings import load_server_settings

SECURITY_LOGGER = "trtserve.serving.security"


def _tokens_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_changed_file_is_read_again_at_the_next_check(tmp_path: Path) -> None:
    path = _tokens_file(tmp_path, "one\ntwo\n")
    source = TokenSource(path, check_interval_s=0.0)
    assert source.tokens() == (b"one", b"two")
    path.write_text("two\nthree\n")  # in place: size, mtime and ctime tell
    assert source.tokens() == (b"three", b"two")
    replacement = tmp_path / "tokens.new"  # an atomic rename (what editors and Secret volumes do)
    replacement.write_text("four\n")
    replacement.chmod(0o600)
    replacement.replace(path)
    assert source.tokens() == (b"four",)


def test_the_file_is_stat_ed_at_most_once_per_interval_and_reload_is_immediate(tmp_path: Path) -> None:
    path = _tokens_file(tmp_path, "one\n")
    source = TokenSource(path, check_interval_s=3600.0)
    path.write_text("two\n")
    assert source.tokens() == (b"one",)  # not checked again yet
    assert source.reload("SIGHUP") is True  # what the server's SIGHUP handler calls
    assert source.tokens() == (b"two",)


@pytest.mark.parametrize("breakage", ["removed", "empty", "unreadable"])
def test_a_failed_reload_keeps_the_tokens_and_logs_one_error(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             breakage: str) -> None:
    path = _tokens_file(tmp_path, "one\n")
    source = TokenSource(path, check_interval_s=0.0)
    if breakage == "removed":
        path.unlink()
    elif breakage == "empty":
        path.write_text("# all revoked\n")
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode")
        path.chmod(0)
    with caplog.at_level(logging.INFO, logger=SECURITY_LOGGER):
        for _ in range(5):
            assert source.tokens() == (b"one",)
        assert source.reload("SIGHUP") is False and source.reload("SIGHUP") is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "still accepting the 1 token(s)" in errors[0].getMessage() and str(path) in errors[0].getMessage()
    caplog.clear()
    path.unlink(missing_ok=True)
    _tokens_file(tmp_path, "two\n")
    with caplog.at_level(logging.INFO, logger=SECURITY_LOGGER):
        assert source.tokens() == (b"two",)  # fixed: in force at the next check
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_missing_or_empty_file_at_start_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        TokenSource(tmp_path / "absent")
    with pytest.raises(ConfigError, match="holds no token"):
        TokenSource(_tokens_file(tmp_path, "\n# none\n"))


@pytest.mark.skipif(os.name == "nt", reason="POSIX mode bits")
@pytest.mark.parametrize("mode, warned, who", [(0o600, False, ""), (0o400, False, ""),
                                               (0o640, True, "its group"), (0o644, True, "everyone")])
def test_a_tokens_file_readable_by_others_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          mode: int, warned: bool, who: str) -> None:
    path = _tokens_file(tmp_path, "secret-token\n", mode)
    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        TokenSource(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if not warned:
        assert warnings == []
        return
    assert len(warnings) == 1 and f"readable by {who}" in warnings[0] and "chmod 600" in warnings[0]
    assert "secret-token" not in warnings[0]
    assert warn_if_readable_by_others(path) is True


def test_keepalive_options_map_seconds_to_grpc_channel_arguments() -> None:
    options = dict(keepalive_options(KeepaliveSettings(), grace_period_s=10.0))
    assert options["grpc.keepalive_time_ms"] == 60_000 and options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert "grpc.max_connection_age_ms" not in options  # off by default: it would cut long video streams
    aged = dict(keepalive_options(KeepaliveSettings(max_connection_idle_s=None, max_connection_age_s=3600.0),
                                  grace_period_s=10.0))
    assert "grpc.max_connection_idle_ms" not in aged
    assert aged["grpc.max_connection_age_ms"] == 3_600_000 and aged["grpc.max_connection_age_grace_ms"] == 10_000
    graced = dict(keepalive_options(KeepaliveSettings(max_connection_age_s=60, max_connection_age_grace_s=0.5), 10))
    assert graced["grpc.max_connection_age_grace_ms"] == 500


def test_auth_and_keepalive_settings(tmp_path: Path) -> None:
    defaults = load_server_settings(environ={})
    assert defaults.auth_reflection_requires_token is True and defaults.auth_exempt == (HEALTH_SERVICE,)
    assert defaults.keepalive == KeepaliveSettings()
    path = tmp_path / "server.yaml"
    path.write_text("auth: {tokens_file: t.txt, reflection_requires_token: false}\n"
                    "keepalive: {time_s: 30, max_connection_idle_s: null, max_connection_age_s: 3600}\n")
    s = load_server_settings(path, environ={})
    assert s.tokens_file == Path("t.txt") and s.auth_exempt == (HEALTH_SERVICE, *REFLECTION_SERVICES)
    assert s.keepalive == KeepaliveSettings(time_s=30.0, max_connection_idle_s=None, max_connection_age_s=3600.0)
    # a later source keeps what it does not set
    flags = load_server_settings(path, environ={}, overrides={"auth.tokens_file": "other.txt",
                                                              "keepalive.timeout_s": 5})
    assert flags.tokens_file == Path("other.txt") and flags.auth_reflection_requires_token is False
    assert flags.keepalive.time_s == 30.0 and flags.keepalive.timeout_s == 5.0


@pytest.mark.parametrize("text, message", [
    ("auth: {reflection_requires_token: 'no'}\n", "key 'auth.reflection_requires_token' has value 'no'"),
    ("auth: {reflections: false}\n", "unknown key 'auth.reflections'"),
    ("auth: {exempt_services: [grpc.health.v1.Health, grpc.reflection.v1alpha.ServerReflection]}\n",
     "auth.reflection_requires_token"),
    ("keepalive: {idle_s: 3}\n", "unknown key 'keepalive.idle_s'"),
    ("keepalive: {time_s: 0}\n", "key 'keepalive.time_s' has value 0"),
    ("keepalive: {timeout_s: null}\n", "key 'keepalive.timeout_s' has value None"),
    ("keepalive: {max_connection_idle_s: five}\n", "key 'keepalive.max_connection_idle_s' has value 'five'"),
    ("keepalive: 300\n", "key 'keepalive' has value 300"),
])
def test_bad_auth_or_keepalive_keys_name_file_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_server_settings(path, environ={})
    assert message in str(info.value) and str(path) in str(info.value)
