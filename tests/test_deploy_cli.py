"""Deployment commands without starting anything: certificates, node keys, command lines, run configs."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

import fed_support  # noqa: F401  sets Flower's environment before flwr is imported

from fedgckd.cli import app  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_certs_make_a_ca_a_server_certificate_and_ec_node_keys(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    res = invoke("certs", "make", "--out", tmp_path, "--sites", 2)
    assert res.exit_code == 0, res.output
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for k in range(2):
        key = load_ssh_private_key((tmp_path / "keys" / f"site-{k}").read_bytes(), None)
        pub = load_ssh_public_key((tmp_path / "keys" / f"site-{k}.pub").read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key().public_numbers() == pub.public_numbers()
        assert (tmp_path / "keys" / f"site-{k}").stat().st_mode & 0o077 == 0, "private keys are owner-only"
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0


def test_an_ed25519_node_key_is_refused_before_flower_sees_it(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from common.deploy.certs import check_node_key

    path = tmp_path / "ed"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    with pytest.raises(ValueError, match="EC key"):
        check_node_key(path)


def test_server_start_command_line_and_cli_connection(tmp_path):
    invoke("certs", "make", "--out", tmp_path / "pki")
    res = invoke("server", "start", "--state", tmp_path / "op", "--certs", tmp_path / "pki", "--port", 19999, "--print")
    assert res.exit_code == 0, res.output
    line = " ".join(res.output.split())
    for part in ("flower-superlink", "--host 127.0.0.1 --port 19999", "--ssl-ca-certfile", "--ssl-certfile",
                 "--ssl-keyfile", "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                 f"--database {tmp_path / 'op' / 'link' / 'state.db'}"):
        assert part in line, part
    assert "--insecure" not in line
    conn = tomllib.loads((tmp_path / "op" / "cli" / "config.toml").read_text())
    assert conn["superlink"]["default"] == "fedgckd"
    assert conn["superlink"]["fedgckd"] == {"address": "127.0.0.1:19999",
                                            "root-certificates": str((tmp_path / "pki" / "ca.crt").resolve())}


def test_insecure_only_when_asked_and_never_with_node_auth(tmp_path):
    res = invoke("server", "start", "--state", tmp_path / "op", "--print")
    assert res.exit_code == 2 and "--insecure" in res.output, "no certificates: refused, not silently insecure"
    res = invoke("server", "start", "--state", tmp_path / "op", "--insecure", "--print")
    assert res.exit_code == 0, res.output
    line = " ".join(res.output.split())
    assert "--insecure" in line and "--enable-supernode-auth" not in line
    conn = tomllib.loads((tmp_path / "op" / "cli" / "config.toml").read_text())
    assert conn["superlink"]["fedgckd"]["insecure"] is True
    res = invoke("site", "start", "--superlink", "127.0.0.1:1", "--data", tmp_path, "--state", tmp_path / "s",
                 "--partition-id", 0, "--num-partitions", 2, "--print")
    assert res.exit_code == 2 and "--insecure" in res.output


def test_site_start_command_line(tmp_path):
    invoke("certs", "make", "--out", tmp_path / "pki", "--sites", 1)
    data = tmp_path / "my data"
    data.mkdir()
    res = invoke("site", "start", "--superlink", "127.0.0.1:19999", "--data", data, "--state", tmp_path / "site0",
                 "--partition-id", 0, "--num-partitions", 2, "--root-cert", tmp_path / "pki" / "ca.crt",
                 "--key", tmp_path / "pki" / "keys" / "site-0", "--port", 19100, "--epsilon", 4, "--print")
    assert res.exit_code == 0, res.output
    from client.supernode import NodeSettings, supernode_argv

    s = NodeSettings("127.0.0.1:19999", 0, 2, data, tmp_path / "site0", 19100, tmp_path / "pki" / "ca.crt",
                     tmp_path / "pki" / "keys" / "site-0", epsilon=4.0)
    argv = supernode_argv(s)
    assert argv[1:5] == ["--superlink", "127.0.0.1:19999", "--port", "19100"]
    assert "--root-certificates" in argv and "--auth-supernode-private-key" in argv and "--insecure" not in argv
    node_config = argv[argv.index("--node-config") + 1]
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([node_config])
    assert parsed == {"partition-id": 0, "num-partitions": 2, "data-dir": str(data.resolve()),
                      "state-dir": str((tmp_path / "site0").resolve()), "epsilon": 4.0}


def test_run_config_merging_and_the_staged_app(tmp_path):
    from server.submit import merge_run_config, stage_app, write_run_config

    preset = tmp_path / "p.toml"
    preset.write_text('[run-config]\nsites = 3\nrounds = 2\n')
    rc = merge_run_config(["rounds=4 target='outline'", 'out-dir="/tmp/a b"'], [preset], {"delta": 1e-5})
    assert rc == {"sites": 3, "rounds": 4, "target": "outline", "out-dir": "/tmp/a b", "delta": 1e-5}
    path = write_run_config({**rc, "server-eval": False, "clip-norm": 1.0}, tmp_path / "rc.toml")
    assert tomllib.loads(path.read_text()) == {**rc, "server-eval": False, "clip-norm": 1.0}
    app_dir = stage_app(tmp_path / "app")
    assert (app_dir / "pyproject.toml").exists() and (app_dir / "server" / "app.py").exists()
    assert (app_dir / "client" / "app.py").exists() and (app_dir / "common" / "atomic.py").exists()
    assert not (app_dir / "tests").exists() and not (app_dir / "data").exists() and not list(app_dir.rglob("*.pyc"))
