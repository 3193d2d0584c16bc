"""RTMPS: the ffmpeg CLI publishing over TLS into a real `townsquare ingest` with a
self-signed certificate, beside plain RTMP on its own port."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ingest.errors import ConfigError
from ingest.metrics import IngestMetrics
from ingest.rooms import Rooms
from ingest.rtmp.server import RtmpServer
from ingest.settings import IngestSettings
from tests.ingest.support import Ingest, ffmpeg_publish, ingest_service, wait_for
from tests.ingest.twins import RecordingPackager
from tests.support.procs import free_port


def _has_rtmps() -> bool:
    if shutil.which("ffmpeg") is None:
        return False
    out = subprocess.run(["ffmpeg", "-hide_banner", "-protocols"], capture_output=True,
                         text=True, check=False).stdout
    return "rtmps" in out.split()


pytestmark = pytest.mark.skipif(not _has_rtmps(), reason="needs an ffmpeg CLI with rtmps")


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ingest, int]]:
    tmp = tmp_path_factory.mktemp("rtmps")
    cert, key = self_signed(tmp)
    port = free_port()
    env = {"TOWNSQUARE_RTMPS_PORT": str(port), "TOWNSQUARE_RTMPS_CERT": str(cert),
           "TOWNSQUARE_RTMPS_KEY": str(key)}
    with ingest_service(tmp, env) as svc:
        yield svc, port


def test_ffmpeg_publishes_over_rtmps_with_a_self_signed_certificate(
        secure: tuple[Ingest, int], tmp_path: Path) -> None:
    ingest, port = secure
    assert httpx.get(f"{ingest.control}/healthz", timeout=5).json()["rtmps_port"] == port
    room = ingest.create_room("secure")
    log = tmp_path / "ffmpeg.log"
    proc = ffmpeg_publish(f"rtmps://127.0.0.1:{port}/live/{room['stream_key']}", 880,
                          seconds=15, log=log)
    try:
        wait_for(lambda: ingest.room("secure")["speakers"], 15,
                 what="a speaker over RTMPS")
        assert proc.poll() is None, log.read_text()
        metrics = httpx.get(f"{ingest.control}/metrics", timeout=5).text
        assert 'townsquare_ingest_rtmp_open_connections{transport="rtmps"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_wrong_key_over_rtmps_is_refused_with_badname(
        secure: tuple[Ingest, int], tmp_path: Path) -> None:
    _, port = secure
    log = tmp_path / "bad.log"
    proc = ffmpeg_publish(f"rtmps://127.0.0.1:{port}/live/tsk_wrong", 500, seconds=5, log=log)
    assert proc.wait(20) != 0
    assert "invalid stream key" in log.read_text()


def test_rtmps_without_a_usable_certificate_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    settings = IngestSettings(rtmps_port=free_port(), rtmps_cert=missing, rtmps_key=missing,
                              data_dir=tmp_path)
    metrics = IngestMetrics()
    rooms = Rooms(RecordingPackager(), None, metrics)
    with pytest.raises(ConfigError, match=f"RTMPS: {missing} does not exist"):
        RtmpServer.from_settings(rooms, metrics, settings)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load certificate"):
        RtmpServer.from_settings(rooms, metrics, settings.model_copy(
            update={"rtmps_cert": garbage, "rtmps_key": garbage}))
