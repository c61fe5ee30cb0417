"""Self-signed certificates for the lab: its HTTPS API (`Lab.up(tls=True)`) and its ZooKeeper
(`Lab.up(zookeeper_tls=True)`)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_self_signed_cert(folder: Path, address: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `address` (openssl): the lab's HTTPS API, its ZooKeeper."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address},DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key
