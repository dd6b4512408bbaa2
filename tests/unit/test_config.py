from pathlib import Path

import pytest
import yaml

from trtserve.config import load_model_config
from trtserve.errors import ConfigError, ModelNotFoundError
from trtserve.repository import ModelRepository

BUNDLED = Path(__file__).resolve().parents[2] / "engines" / "shapes" / "model.yaml"


def write(tmp_path: Path, patch: dict, drop: tuple[str, ...] = ()) -> Path:
    doc = yaml.safe_load(BUNDLED.read_text())
    for key in drop:
        parent, _, leaf = key.rpartition(".")
        (doc[parent] if parent else doc).pop(leaf)
    for key, value in patch.items():
        parent, _, leaf = key.rpartition(".")
        (doc[parent] if parent else doc)[leaf] = value
    folder = tmp_path / doc["name"]
    folder.mkdir(exist_ok=True)
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_bundled_config_loads() -> None:
    cfg = load_model_config(BUNDLED)
    assert cfg.name == "shapes" and cfg.head.type == "yolov8" and len(cfg.class_names) == 6
    assert cfg.input.height_px == 256 and cfg.onnx_path == BUNDLED.parent / "model.onnx"


@pytest.mark.parametrize("patch, drop, message", [
    ({"colour": "red"}, (), "unknown key 'colour'"),
    ({"input.sizes": 3}, (), "unknown key 'input.sizes'"),
    ({"max_batch_size": "eight"}, (), "key 'max_batch_size' has value 'eight'; expected an integer"),
    ({"max_batch_size": 0}, (), "key 'max_batch_size' has value 0; expected an integer in"),
    ({"max_batch_size": True}, (), "key 'max_batch_size' has value True"),
    ({"head.type": "yolov99"}, (), "key 'head.type' has value 'yolov99'; expected one of"),
    ({"input.interpolation": "cubic"}, (), "key 'input.interpolation' has value 'cubic'; expected one of"),
    ({"head.score_threshold": 1.5}, (), "key 'head.score_threshold' has value 1.5"),
    ({"input.layout": "chw"}, (), "key 'input.layout'"),
    ({"input.std": [1, 0, 1]}, (), "key 'input.std'"),
    ({"input.mean": [1, 2]}, (), "key 'input.mean' has value [1, 2]; expected a list of 3 numbers"),
    ({"classes": ["a", "a"]}, (), "distinct class names"),
    ({"classes": []}, (), "non-empty list for head type 'yolov8'"),
    ({"artifacts": {"fp32": "x.onnx"}}, (), "key 'artifacts.fp32'"),
    ({}, ("input.height_px",), "missing required key 'input.height_px'"),
    ({}, ("onnx",), "missing required key 'onnx'"),
])
def test_errors_name_file_key_value_and_expectation(tmp_path: Path, patch: dict, drop: tuple, message: str) -> None:
    path = write(tmp_path, patch, drop)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(bad)
    with pytest.raises(ConfigError, match="no such model configuration file"):
        load_model_config(tmp_path / "nope.yaml")
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_model_config(bad)


def test_repository_lookup(tmp_path: Path) -> None:
    write(tmp_path, {})
    repo = ModelRepository(tmp_path)
    assert repo.names() == ["shapes"]
    with pytest.raises(ModelNotFoundError, match=r"no model 'cars'.*available: \['shapes'\]"):
        repo.get("cars")
    other = write(tmp_path, {"name": "other"})
    other.parent.rename(tmp_path / "renamed")
    with pytest.raises(ConfigError, match="expected 'renamed'"):
        repo.get("renamed")


def test_missing_artifact_says_what_to_do(tmp_path: Path) -> None:
    cfg = load_model_config(write(tmp_path, {}, drop=("artifacts",)))
    with pytest.raises(ConfigError, match="trtserve calibrate shapes"):
        cfg.artifact("int8")


def test_quantization_section(tmp_path: Path) -> None:
    cfg = load_model_config(write(tmp_path, {"quantization": {"exclude_op_types": ["Sigmoid"]}}))
    assert cfg.quantization.exclude_op_types == ("Sigmoid",) and cfg.quantization.keep_head_float
    with pytest.raises(ConfigError, match=r"unknown key 'quantization\.exclude'"):
        load_model_config(write(tmp_path, {"quantization": {"exclude": ["x"]}}))
    with pytest.raises(ConfigError, match=r"key 'quantization\.exclude_nodes' has value"):
        load_model_config(write(tmp_path, {"quantization": {"exclude_nodes": [1]}}))
