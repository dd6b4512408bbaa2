"""The client commands (``models --server``, ``calibrate --from-server``, ``recalibrate``) against a real TLS
server whose calibration reservoir holds frames: ``--tls-ca`` reaches it, the calibration options pass through to
the staged calibration, and the options a calibration on the reservoir cannot honour are refused."""

import asyncio
import datetime
import json
import math
import shutil
from pathlib import Path

import cv2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trtserve.cli import main
from trtserve.config import ReservoirSpec
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene
from trtserve.monitoring.reservoir import Reservoir
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.security import TlsSettings
from trtserve.serving.server import Server, ServerSettings

from ...conftest import ENGINES

FRAMES = 10


def _pki(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for localhost, server key), PEM files in ``folder``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])

    def cert(subject: x509.Name, public: ec.EllipticCurvePublicKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    files = (folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files[0].write_bytes(cert(ca_name, ca_key.public_key(), True).public_bytes(serialization.Encoding.PEM))
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    files[1].write_bytes(cert(server_name, key.public_key(), False).public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


def _repository(root: Path) -> Path:
    dst = root / "shapes"
    dst.mkdir(parents=True)
    for f in (ENGINES / "shapes").iterdir():
        if f.is_file():
            shutil.copy(f, dst / f.name)
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_client_commands_reach_a_tls_server_and_pass_the_calibration_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, cert, key = _pki(tmp_path)
    engines = _repository(tmp_path / "engines")
    spec = ReservoirSpec(enabled=True, max_frames=50, dir=tmp_path / "reservoir")
    held = Reservoir.open("shapes", tmp_path / "reservoir" / "shapes", spec)
    for i in range(FRAMES):  # as a drift shadow would have left them: letterboxed to the model's input
        assert held.offer(cv2.resize(render_scene(CALIBRATION_SEED, i).image_bgr, (256, 256)), 0.9)
    settings = ServerSettings(grpc_port=0, metrics_port=None, model_control=True, grace_period_s=5,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5),
                              tls=TlsSettings(cert, key), calibration_reservoir=spec)
    repo = ["--repository", str(engines)]

    async def main_() -> None:
        server = Server(settings, ModelRepository(engines))
        await server.start()
        address = f"localhost:{server.port}"
        try:
            code, out, err = await asyncio.to_thread(_run, capsys, *repo, "models", "--server", address,
                                                     "--tls-ca", str(ca), "reload", "shapes", "--json")
            assert code == 0, err
            assert json.loads(out)["version"] == 2
            code, out, err = await asyncio.to_thread(
                _run, capsys, *repo, "calibrate", "shapes", "--from-server", address, "--tls-ca", str(ca),
                "--pull-dir", str(tmp_path / "pull"), "--batch", "4", "--method", "percentile",
                "--percentile", "99.5", "--auto-exclude", "--target-agreement", "0.5", "--json")
            assert code == 0, err
            calibration = json.loads(out)["report"]["calibration"]
            assert calibration["method"] == "percentile" and calibration["frames_used"] == FRAMES
            assert calibration["batches"] == math.ceil(FRAMES / 4)  # --batch 4, not the default 8
            assert calibration["auto_exclude"] is not None  # --auto-exclude reached the calibration
            code, out, err = await asyncio.to_thread(
                _run, capsys, *repo, "recalibrate", "shapes", "--server", address, "--tls-ca", str(ca),
                "--pull-dir", str(tmp_path / "pull2"), "--batch", "2", "--dry-run", "--json")
            assert code == 0, err
            payload = json.loads(out)
            assert payload["dry_run"] and payload["report"]["calibration"]["batches"] == math.ceil(FRAMES / 2)
            code, _, err = await asyncio.to_thread(_run, capsys, *repo, "models", "--server", address,
                                                     "reload", "shapes")  # no --tls-ca: plaintext, refused
            assert code != 0 and "UNAVAILABLE" in err, err
        finally:
            await server.stop()

    asyncio.run(main_())


@pytest.mark.parametrize("extra", [["--eval-images", "5"], ["--eval-data", "somewhere"]])
def test_calibrate_from_server_refuses_the_options_it_cannot_honour(
        extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default --pull-dir, had it got that far
    code, _, err = _run(capsys, "calibrate", "shapes", "--from-server", "127.0.0.1:1", *extra)
    assert code == 2 and extra[0] in err and "cannot be combined" in err and "Traceback" not in err, err


def test_a_pull_resumed_against_another_reservoir_is_refused_not_mixed(tmp_path: Path) -> None:
    from collections.abc import Iterator

    from trtserve.calibration.from_server import STATE_FILE, PulledFrame, pull_reservoir, pulled_frames
    from trtserve.cli.remote import RemoteServer
    from trtserve.errors import CalibrationInputError, RemoteCallError

    engines = _repository(tmp_path / "engines")
    spec = ReservoirSpec(enabled=True, max_frames=50, dir=tmp_path / "reservoir")
    held = Reservoir.open("shapes", tmp_path / "reservoir" / "shapes", spec)
    for i in range(FRAMES):
        assert held.offer(cv2.resize(render_scene(CALIBRATION_SEED, i).image_bgr, (256, 256)), 0.9)
    settings = ServerSettings(grpc_port=0, metrics_port=None, model_control=True, calibration_reservoir=spec)
    pull_dir = tmp_path / "pull"

    async def pull(interrupt: bool) -> None:
        server = Server(settings, ModelRepository(engines))  # a fresh server: another reservoir instance
        await server.start()
        address = f"127.0.0.1:{server.port}"
        try:
            with RemoteServer(address) as remote:
                fetch = remote.fetch("shapes")

                def broken(after_id: int, up_to_id: int) -> Iterator[PulledFrame]:
                    for k, frame in enumerate(fetch(after_id, up_to_id)):
                        if k == 3:
                            raise RemoteCallError("connection lost (simulated)")
                        yield frame

                await asyncio.to_thread(pull_reservoir, pull_dir, "trtserve:8001", "shapes",
                                        broken if interrupt else fetch)
        finally:
            await server.stop()

    with pytest.raises(RemoteCallError):
        asyncio.run(pull(interrupt=True))
    assert json.loads((pull_dir / STATE_FILE).read_text())["reservoir_id"]
    with pytest.raises(CalibrationInputError, match="never mixed"):
        asyncio.run(pull(interrupt=False))  # same address, another server: refused
    with pytest.raises(CalibrationInputError, match="incomplete"):
        pulled_frames(pull_dir)
    assert len(list(pull_dir.glob("*.png"))) == 3
    (pull_dir / STATE_FILE).unlink()  # what the refusal says to do: the pull starts over
    asyncio.run(pull(interrupt=False))
    assert len(pulled_frames(pull_dir)) == FRAMES
