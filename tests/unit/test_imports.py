import subprocess
import sys


def test_importing_the_library_loads_no_inference_runtime() -> None:
    code = ("import sys, trtserve, trtserve.detector, trtserve.cli, trtserve.backends, trtserve.tensorrt.builder, "
            "trtserve.tensorrt.keys, trtserve.tensorrt.cuda, trtserve.backends.tensorrt, trtserve.deploy.doctor; "
            "heavy = [m for m in ('onnxruntime', 'tensorrt', 'torch', 'cuda') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_cli_entry_point_stays_a_function_once_its_parser_module_is_imported() -> None:
    """``trtserve.cli:main`` is the console script; a submodule of the same name would replace it on import."""
    import importlib

    import trtserve.cli

    importlib.import_module("trtserve.cli.parser")
    assert callable(trtserve.cli.main) and trtserve.cli.main.__module__ == "trtserve.cli"
