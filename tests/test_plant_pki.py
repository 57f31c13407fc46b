"""`fixture-agent plant pki`: two CAs, names each may sign, keys kept safe, revocation and CRLs.

Certificates and CRLs are checked with the openssl command line as well, an implementation
other than the one that made them.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.plant.pki import PkiError, check_plant_name, check_station_id
from agent.plant.pki_store import PkiFolder

NOW = dt.datetime(2030, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def pki(tmp_path: Path) -> PkiFolder:
    folder = PkiFolder(tmp_path / "pki")
    folder.create(org="test", ca_days=3650, crl_days=30, now=NOW)
    return folder


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def openssl_verify(ca: Path, cert: Path, *, crl: Path | None = None) -> str:
    """What `openssl verify` says of ``cert`` (at NOW), checking the CRL when given."""
    args = ["openssl", "verify", "-attime", str(int(NOW.timestamp()) + 60), "-CAfile", str(ca)]
    if crl is not None:
        args += ["-crl_check", "-CRLfile", str(crl)]
    result = subprocess.run([*args, str(cert)], capture_output=True, text=True, check=False)
    return (result.stdout + result.stderr).strip()


@pytest.mark.parametrize("name", ["plant", "plant-recorder-1", "plant-x", "St01", "st_01",
                                  "-st01", "st/01", "st+", "a" * 49, ""])
def test_names_a_station_certificate_must_not_carry(name: str) -> None:
    with pytest.raises(PkiError):
        check_station_id(name)


@pytest.mark.parametrize("name", ["line3-st07", "demo-st01", "planter", "0"])
def test_station_ids(name: str) -> None:
    check_station_id(name)


@pytest.mark.parametrize(("name", "ok"), [
    ("plant-recorder", True), ("plant-recorder-2", True), ("plant-rollout", True),
    ("plant-tools", True), ("plant-console", True), ("plant-boss", False),
    ("plant-recorder-", False), ("st01", False), ("plant-recorder-1-x", False)])
def test_plant_identities_name_a_role(name: str, ok: bool) -> None:
    if ok:
        check_plant_name(name)
    else:
        with pytest.raises(PkiError, match="must be one of plant-recorder"):
            check_plant_name(name)


def test_two_cas_with_keys_only_the_owner_reads_and_never_overwritten(pki: PkiFolder) -> None:
    keys = [pki.root / "station-ca.key", pki.root / "plant-ca.key"]
    assert [key.stat().st_mode & 0o777 for key in keys] == [0o600, 0o600]
    before = [key.read_bytes() for key in keys]
    with pytest.raises(PkiError, match="a CA key is never overwritten"):
        pki.create(org="test", ca_days=10, crl_days=10, now=NOW)
    assert [key.read_bytes() for key in keys] == before
    station, plant = load(pki.ca_cert_path("station")), load(pki.ca_cert_path("plant"))
    assert station.subject != plant.subject
    for ca in (station, plant):
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_station_certificate_comes_from_the_station_ca_only(pki: PkiFolder,
                                                              tmp_path: Path) -> None:
    issued = pki.issue_client("st01", kind="station", days=730, out=tmp_path / "ids", now=NOW)
    cert = load(issued.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "st01"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])  # also an HTTPS client's
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.key.stat().st_mode & 0o777 == 0o600
    assert openssl_verify(pki.ca_cert_path("station"), issued.cert).endswith(": OK")
    assert "unable to get local issuer" in openssl_verify(pki.ca_cert_path("plant"), issued.cert)


def test_serials_are_random_and_issued_files_never_overwritten(pki: PkiFolder,
                                                               tmp_path: Path) -> None:
    first = pki.issue_client("st01", kind="station", days=1, out=tmp_path / "a", now=NOW)
    second = pki.issue_client("st01", kind="station", days=1, out=tmp_path / "b", now=NOW)
    serials = [load(issued.cert).serial_number for issued in (first, second)]
    assert serials[0] != serials[1]
    assert all(serial.bit_length() > 64 for serial in serials)
    with pytest.raises(PkiError, match="refusing to overwrite"):
        pki.issue_client("st01", kind="station", days=1, out=tmp_path / "a", now=NOW)
    assert load(first.cert).serial_number == serials[0]


def test_the_broker_certificate_names_its_host_and_comes_from_the_plant_ca(
        pki: PkiFolder, tmp_path: Path) -> None:
    issued = pki.issue_server("broker", dns=["mqtt.plant.example"], ips=["10.0.0.5"], days=365,
                              out=tmp_path / "tls", now=NOW)
    cert = load(issued.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mqtt.plant.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert openssl_verify(pki.ca_cert_path("plant"), issued.cert).endswith(": OK")
    written = {path.name for path in pki.publish(tmp_path / "tls")}
    assert written == {"station-ca.pem", "plant-ca.pem", "station-ca.crl.pem", "plant-ca.crl.pem"}


def test_revocation_is_kept_and_the_crl_says_so_until_its_next_update(
        pki: PkiFolder, tmp_path: Path) -> None:
    issued = pki.issue_client("st01", kind="station", days=30, out=tmp_path, now=NOW)
    crl_path = pki.crl_path("station")
    assert openssl_verify(pki.ca_cert_path("station"), issued.cert, crl=crl_path).endswith(": OK")
    number = x509.load_pem_x509_crl(crl_path.read_bytes()).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number
    pki.revoke(name="st01", now=NOW)
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(load(issued.cert).serial_number)
    assert crl.next_update_utc == NOW + dt.timedelta(days=30)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    assert "certificate revoked" in openssl_verify(pki.ca_cert_path("station"), issued.cert,
                                                   crl=crl_path)
    reopened = PkiFolder(pki.root)  # what a later command sees
    assert reopened.inventory().certificates("station")[0].revoked_at == NOW
    reopened.refresh_crls(now=NOW + dt.timedelta(days=20))
    refreshed = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert refreshed.next_update_utc == NOW + dt.timedelta(days=50)
    assert refreshed.get_revoked_certificate_by_serial_number(load(issued.cert).serial_number)


def test_rotation_revokes_the_old_serial_only(pki: PkiFolder, tmp_path: Path) -> None:
    old = pki.issue_client("st01", kind="station", days=30, out=tmp_path / "old", now=NOW)
    new = pki.issue_client("st01", kind="station", days=30, out=tmp_path / "new", now=NOW)
    (revoked,) = pki.revoke(serial=old.record.serial, now=NOW)
    assert revoked.serial == old.record.serial
    crl = pki.crl_path("station")
    assert "certificate revoked" in openssl_verify(pki.ca_cert_path("station"), old.cert, crl=crl)
    assert openssl_verify(pki.ca_cert_path("station"), new.cert, crl=crl).endswith(": OK")
    with pytest.raises(PkiError, match="no unrevoked certificate"):
        pki.revoke(serial=old.record.serial, now=NOW)


def fixture_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "plant", "pki", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_command_line_from_init_to_list(tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    assert fixture_agent("init", "--dir", pki).returncode == 0
    assert fixture_agent("issue-station", "st01", "--dir", pki).returncode == 0
    assert fixture_agent("issue-plant", "plant-console", "--dir", pki).returncode == 0
    revoked = fixture_agent("revoke", "st01", "--dir", pki, "--out", str(tmp_path / "broker"))
    assert revoked.returncode == 0, revoked.stderr
    assert "reload mosquitto" in revoked.stdout
    assert (tmp_path / "broker" / "station-ca.crl.pem").exists()
    listing = fixture_agent("list", "--dir", pki).stdout
    assert [line.split()[0] for line in listing.splitlines()[1:3]] == ["st01", "plant-console"]
    assert "revoked" in listing.splitlines()[1]
    assert "CRL expires in 29 days" in listing


@pytest.mark.parametrize(("args", "says"), [
    (["issue-station", "plant-recorder-1"], "is reserved"),
    (["issue-plant", "st01"], "must be one of"),
    (["init"], "a CA key is never overwritten"),
    (["revoke", "nobody"], "no unrevoked certificate named 'nobody'"),
    (["issue-station", "st02", "--days", "0"], "--days must be 1 to 36500 days"),
    (["broker", "--out", "{tmp}/tls", "--ip", "mqtt"], "'mqtt' is not an IP address"),
])
def test_refusals_are_one_sentence(tmp_path: Path, args: list[str], says: str) -> None:
    pki = str(tmp_path / "pki")
    assert fixture_agent("init", "--dir", pki).returncode == 0
    result = fixture_agent(*(arg.format(tmp=tmp_path) for arg in args), "--dir", pki)
    assert result.returncode in (1, 2)
    (line,) = result.stderr.splitlines()
    assert says in line


def test_a_missing_pki_folder_is_named_not_created(tmp_path: Path) -> None:
    result = fixture_agent("issue-station", "st01", "--dir", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "is no PKI folder: create one with `fixture-agent plant pki init" in result.stderr
    assert not (tmp_path / "nope").exists()
