"""Settings of issue 16: batcher.instances auto, normalize_in_model, event_loop — from YAML, environment, flags."""

from pathlib import Path

import pytest

from trtserve.errors import ConfigError
from trtserve.serving.settings import load_server_settings


def test_instances_auto_normalize_in_model_and_the_event_loop_are_read_from_every_source(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("batcher: {instances: auto}\nnormalize_in_model: true\nevent_loop: uvloop\n", encoding="utf-8")
    s = load_server_settings(config, environ={})
    assert (s.batcher.instances, s.normalize_in_model, s.event_loop) == (0, True, "uvloop")
    s = load_server_settings(None, environ={"TRTSERVE_INSTANCES": "auto", "TRTSERVE_NORMALIZE_IN_MODEL": "off",
                                            "TRTSERVE_EVENT_LOOP": "auto"})
    assert (s.batcher.instances, s.normalize_in_model, s.event_loop) == (0, False, "auto")
    s = load_server_settings(config, environ={}, overrides={"batcher.instances": 3, "normalize_in_model": False,
                                                             "event_loop": "asyncio"})
    assert (s.batcher.instances, s.normalize_in_model, s.event_loop) == (3, False, "asyncio")
    defaults = load_server_settings(None, environ={})
    assert (defaults.batcher.instances, defaults.normalize_in_model, defaults.event_loop) == (2, False, "asyncio")


@pytest.mark.parametrize(("environ", "named"), [
    ({"TRTSERVE_EVENT_LOOP": "trio"}, "event_loop"),
    ({"TRTSERVE_NORMALIZE_IN_MODEL": "maybe"}, "TRTSERVE_NORMALIZE_IN_MODEL"),
    ({"TRTSERVE_INSTANCES": "many"}, "TRTSERVE_INSTANCES"),
])
def test_a_bad_value_refuses_to_start_naming_it(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_server_settings(None, environ=environ)
