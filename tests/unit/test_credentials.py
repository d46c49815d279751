"""`fedprivacy credentials`: a CA, a server certificate for the named hosts, SuperNode keys."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedprivacy.simulations.credentials import make_credentials

pytestmark = pytest.mark.unit


def _verify(creds, host):
    """Verify the server certificate for ``host`` against the CA, as a TLS client does."""
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    subject = (x509.IPAddress(ipaddress.ip_address(host)) if host[0].isdigit()
               else x509.DNSName(host))
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
    return verifier.verify(server, [])


def test_the_server_certificate_is_valid_for_every_named_host_and_no_other(tmp_path):
    # Prepare / Execute
    creds = make_credentials(tmp_path, ["127.0.0.1", "superlink.example.org"], nodes=2)
    # Assert: a TLS client trusting the CA accepts both names, and refuses another
    assert _verify(creds, "127.0.0.1") and _verify(creds, "superlink.example.org")
    with pytest.raises(VerificationError):
        _verify(creds, "10.0.0.9")


def test_supernode_keys_are_openssh_ecdsa_pairs_readable_only_by_the_owner(tmp_path):
    creds = make_credentials(tmp_path, ["127.0.0.1"], nodes=2)
    assert [p.name for p in creds.node_keys] == ["supernode-1", "supernode-2"]
    for key_path in creds.node_keys + [creds.server_key]:
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    private = serialization.load_ssh_private_key(creds.node_keys[0].read_bytes(), None)
    public = serialization.load_ssh_public_key(
        creds.node_keys[0].with_suffix(".pub").read_bytes())
    assert private.public_key().public_numbers() == public.public_numbers()
    assert creds.node_keys[0].with_suffix(".pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_no_host_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(ValueError, match="^--host: name at least one host"):
        make_credentials(tmp_path, [], nodes=1)
