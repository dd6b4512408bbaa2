from pathlib import Path

import pytest

from trtserve.errors import ConfigError
from trtserve.serving.settings import load_server_settings


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("grpc_port: 9000\nhost: 0.0.0.0\nbatcher: {max_batch_size: 4, max_queue_delay_ms: 3}\n"
                    "models: [shapes]\n")
    defaults = load_server_settings(environ={})
    assert defaults.grpc_port == 8001 and defaults.batcher.max_batch_size == 8
    from_file = load_server_settings(path, environ={})
    assert (from_file.grpc_port, from_file.host, from_file.batcher.max_batch_size) == (9000, "0.0.0.0", 4)
    env = {"TRTSERVE_GRPC_PORT": "9100", "TRTSERVE_MAX_BATCH_SIZE": "2"}
    from_env = load_server_settings(path, environ=env)
    assert (from_env.grpc_port, from_env.batcher.max_batch_size, from_env.batcher.max_queue_delay_ms) == (9100, 2, 3)
    flags = load_server_settings(path, environ=env, overrides={"grpc_port": 9200, "host": None})
    assert (flags.grpc_port, flags.host) == (9200, "0.0.0.0")


@pytest.mark.parametrize("text, message", [
    ("grpc_prot: 1\n", "unknown key 'grpc_prot'"),
    ("grpc_port: 70000\n", "key 'grpc_port' has value 70000"),
    ("batcher: {max_batch: 3}\n", "unknown key 'batcher.max_batch'"),
    ("models: []\n", "key 'models' has value []"),
    ("precision: int4\n", "key 'precision' has value 'int4'"),
])
def test_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_server_settings(path, environ={})
    assert message in str(info.value) and str(path) in str(info.value)


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TRTSERVE_GRPC_PORT='http'"):
        load_server_settings(environ={"TRTSERVE_GRPC_PORT": "http"})


def test_intra_op_threads_and_instances(tmp_path: Path) -> None:
    defaults = load_server_settings(None, environ={})
    assert defaults.intra_op_threads == 0 and defaults.batcher.instances == 2  # 0: cores / instances
    path = tmp_path / "server.yaml"
    path.write_text("intra_op_threads: 3\n")
    assert load_server_settings(path, environ={"TRTSERVE_INTRA_OP_THREADS": "1"}).intra_op_threads == 1
    path.write_text("intra_op_threads: -1\n")
    with pytest.raises(ConfigError, match="key 'intra_op_threads' has value -1"):
        load_server_settings(path, environ={})
