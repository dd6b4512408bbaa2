"""The model repository: ``engines/<model>/model.yaml`` plus the model's files.

**Pre-quantized models.**
A folder whose ``onnx:`` names a model holding QuantizeLinear/DequantizeLinear nodes — what NVIDIA ModelOpt,
pytorch-quantization, Brevitas (QCDQ), SuperGradients' QAT export or ONNX Runtime's ``quantize_static`` in QDQ
format write — is read by :func:`prequantized_view` as:

* ``int8`` and ``int8_tensorrt``: that Q/DQ model itself (unless ``artifacts:`` names others): ONNX Runtime runs
  it, and TensorRT 10/11 build it as an explicitly quantized (strongly typed) network;
* ``fp32`` (``onnx_path``): its FP32 copy with the Q/DQ folded away (:func:`calibrators.fold.fold_qdq`: weights
  dequantized once into float initializers, activation Q -> DQ pairs removed), which the drift shadow runs and
  ``fp32``/``fp16`` builds use. It is written once per Q/DQ file content, as ``<stem>.fp32-<sha256[:12]>.onnx``
  beside it (or, where that folder is read-only, in the system's temporary folder);
* ``prequantized``: the Q/DQ file (``trtserve calibrate`` refuses such a model: it is quantized already).

A Q/DQ model with no float path (integer-only operators such as QLinearConv) is refused with a one-line error
naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from trtserve.config import ModelConfig, load_model_config
from trtserve.errors import ConfigError, ModelLoadError, ModelNotFoundError, clip

logger = logging.getLogger(__name__)

CONFIG_FILE = "model.yaml"


def default_root() -> Path:
    """``$TRTSERVE_MODEL_REPOSITORY`` if set, else ``engines/`` of a source checkout, else ``./engines``."""
    env = os.environ.get("TRTSERVE_MODEL_REPOSITORY")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "engines"
    return checkout if checkout.is_dir() else Path("engines")


class ModelRepository:
    """A folder with one sub-folder per model. Configurations are validated when read; a model whose ``onnx:`` is
    already quantized (Q/DQ) is read as :func:`trtserve.prequantized.prequantized_view` says."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} does not exist; pass --repository DIR "
                              "or set TRTSERVE_MODEL_REPOSITORY")
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG_FILE).is_file())

    def check(self, name: str) -> None:
        """ModelNotFoundError unless ``name`` is one of :meth:`names` (a folder name: never a path such as
        ``../x``). The message clips ``name`` and lists the models, never the repository's path on this host: a
        server answers a client's model name with it (a repository that cannot be read counts as empty)."""
        try:
            names = self.names()
        except ConfigError:
            names = []
        self._known(name, names)

    @staticmethod
    def _known(name: str, names: list[str]) -> None:
        if name not in names:
            raise ModelNotFoundError(f"no model {clip(name)} in the model repository; available: {names or 'none'}")

    def get(self, name: str) -> ModelConfig:
        self._known(name, self.names())  # a missing repository: ConfigError naming it (the CLI's case)
        path = self.root / name / CONFIG_FILE
        config = load_model_config(path)
        if config.name != name:
            raise ConfigError(f"{path}: key 'name' has value {config.name!r}; expected {name!r} "
                              "(the folder name)")
        return prequantized_view(config)  # a QAT / pre-quantized Q/DQ 'onnx:' is served as int8 as it is

    def all(self) -> list[ModelConfig]:
        return [self.get(n) for n in self.names()]


FOLDED_INFIX = ".fp32-"
_lock = threading.Lock()
_kinds: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> "qdq" | "integer" | "float"
_folded: dict[tuple[str, int, int], Path] = {}


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def quantization_kind(path: Path) -> str:
    """``qdq`` (QuantizeLinear/DequantizeLinear nodes), ``integer`` (integer-only operators, no Q/DQ) or
    ``float`` for an ONNX file; remembered per file version (path, mtime, size)."""
    key = _key(path)
    with _lock:
        if key in _kinds:
            return _kinds[key]
    import onnx

    from calibrators.fold import count_qdq, integer_only_nodes

    model = onnx.load(str(path), load_external_data=False)
    kind = "qdq" if count_qdq(model) else "integer" if integer_only_nodes(model.graph.node) else "float"
    with _lock:
        _kinds[key] = kind
    return kind


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fp32_shadow_of(qdq_path: Path, model_name: str) -> Path:
    """The FP32 copy of a Q/DQ model (written on first use; see the module); ModelLoadError without a float path."""
    key = _key(qdq_path)
    with _lock:
        known = _folded.get(key)
    if known is not None and known.is_file():
        return known
    sha = _sha256(qdq_path)[:12]
    name = f"{qdq_path.stem}{FOLDED_INFIX}{sha}.onnx"
    elsewhere = Path(tempfile.gettempdir()) / "trtserve-fp32-from-qdq" / f"{model_name}-{name}"  # read-only folder
    candidates = [qdq_path.parent / name, elsewhere]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        found = _write_folded(qdq_path, candidates, sha)
    with _lock:
        _folded[key] = found
    return found


def _write_folded(qdq_path: Path, candidates: list[Path], sha: str) -> Path:
    import onnx

    from calibrators.files import atomic_write_bytes
    from calibrators.fold import NoFloatPathError, fold_qdq

    try:
        result = fold_qdq(onnx.load(str(qdq_path)), str(qdq_path))
    except NoFloatPathError as exc:
        raise ModelLoadError(str(exc)) from None
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{qdq_path}: its Q/DQ could not be folded into an FP32 model ({exc}); point 'onnx:' "
                             "at the model's FP32 export") from None
    model = result.model
    entry = model.metadata_props.add()
    entry.key, entry.value = "trtserve.fp32_folded_from", f"{qdq_path.name} sha256:{sha}"
    data = model.SerializeToString()
    for target in candidates:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        except OSError as exc:
            logger.info("cannot write the folded FP32 model to %s (%s); trying the next place", target, exc)
            continue
        for stale in target.parent.glob(f"{qdq_path.stem}{FOLDED_INFIX}*.onnx"):
            if stale != target:
                stale.unlink(missing_ok=True)  # the copy of an older version of the Q/DQ file
        logger.info("%s is already quantized: its FP32 shadow %s has %d weights dequantized and %d activation "
                    "Q/DQ pairs removed", qdq_path.name, target, result.weights_folded, result.activation_pairs_removed)
        return target
    raise ModelLoadError(f"{qdq_path}: cannot write its folded FP32 model to {candidates[0].parent} or "
                         f"{candidates[-1].parent}; make one of them writable")


def prequantized_view(config: ModelConfig) -> ModelConfig:
    """``config`` as served: for a Q/DQ ``onnx:`` the INT8 artifacts are that model and ``onnx_path`` its folded
    FP32 copy (see the module); any other configuration unchanged."""
    path = config.onnx_path
    if config.prequantized is not None or not path.is_file() or path.suffix != ".onnx":
        return config
    kind = quantization_kind(path)
    if kind == "float":
        return config
    if kind == "integer":
        raise ModelLoadError(f"{path}: the model is quantized with integer-only operators (QLinearConv, ConvInteger, "
                             "...; ONNX Runtime's QOperator format), so there is no float path to derive the FP32 "
                             "shadow from; export it in QDQ format (quantize_static(quant_format=QuantFormat.QDQ), "
                             "ModelOpt, pytorch-quantization) or point 'onnx:' at its FP32 export")
    fp32 = fp32_shadow_of(path, config.name)
    artifacts = {"int8": path, "int8_tensorrt": path, **config.artifacts}
    return replace(config, onnx_path=fp32, artifacts=artifacts, prequantized=path)
