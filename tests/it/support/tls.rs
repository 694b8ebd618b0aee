//! A throw-away certificate authority minted at test time, for hubs that
//! speak TLS on 127.0.0.1.
//!
//! `TestCa::new(dir)` writes the CA certificate to `dir/test-ca.pem` (what a
//! sidecar gets as `tls_ca_file`) and holds a server identity for `localhost`
//! and `127.0.0.1` signed by that CA. Nothing is checked in and nothing is
//! trusted system-wide: a client that is not given the CA file must refuse
//! the server, which is itself worth testing.
//!
//! Usage:
//!
//! ```ignore
//! let ca = TestCa::new(tempdir.path());
//! let acceptor = ca.acceptor();                 // server side
//! let tls_ca_file = ca.ca_file.clone();        // client side
//! ```

use std::path::{Path, PathBuf};

use native_tls::{Identity, TlsAcceptor};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameRef, X509};

/// A test CA plus one server identity it signed.
pub struct TestCa {
    /// PEM file holding the CA certificate (and nothing else).
    pub ca_file: PathBuf,
    /// Server certificate for DNS `localhost` and IP `127.0.0.1`, with its
    /// key, for a `native_tls::TlsAcceptor`.
    pub identity: Identity,
    ca_cert: X509,
    ca_key: PKey<Private>,
}

impl TestCa {
    /// Mints the CA and the `localhost`/`127.0.0.1` server certificate and
    /// writes the CA certificate to `dir/test-ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let ca_key = new_key();
        let ca_cert = mint_ca(&ca_key);
        let ca_file = dir.join("test-ca.pem");
        let ca_pem = ca_cert.to_pem().expect("encode the CA certificate as PEM");
        std::fs::write(&ca_file, ca_pem).expect("write the test CA file");
        let identity = server_identity(&ca_cert, &ca_key, &["localhost"], &["127.0.0.1"]);
        TestCa { ca_file, identity, ca_cert, ca_key }
    }

    /// A TLS acceptor presenting `identity`.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::new(self.identity.clone()).expect("build a TLS acceptor from the test identity")
    }

    /// A TLS acceptor whose certificate, signed by this CA, names only
    /// `dns_name`: a client connecting to `localhost` must reject it for the
    /// host name even though it trusts the CA.
    pub fn acceptor_for_other_name(&self, dns_name: &str) -> TlsAcceptor {
        let identity = server_identity(&self.ca_cert, &self.ca_key, &[dns_name], &[]);
        TlsAcceptor::new(identity).expect("build a TLS acceptor from the test identity")
    }
}

// RSA rather than EC keys: every native-tls backend accepts them.
fn new_key() -> PKey<Private> {
    let rsa = Rsa::generate(2048).expect("generate an RSA key");
    PKey::from_rsa(rsa).expect("wrap the RSA key")
}

fn name(common_name: &str) -> X509Name {
    let mut name = X509Name::builder().expect("X509 name builder");
    name.append_entry_by_text("CN", common_name).expect("set CN");
    name.build()
}

/// Common fields: v3, random serial, valid from 2020 until a month from now
/// (a start in the past keeps a skewed clock from mattering).
fn builder(subject: &X509NameRef, issuer: &X509NameRef, key: &PKey<Private>) -> X509Builder {
    let mut builder = X509Builder::new().expect("X509 builder");
    builder.set_version(2).expect("set version 3");
    let mut serial = BigNum::new().expect("bignum");
    serial.rand(127, MsbOption::MAYBE_ZERO, false).expect("random serial");
    builder.set_serial_number(&serial.to_asn1_integer().expect("serial as ASN.1")).expect("set serial");
    builder.set_subject_name(subject).expect("set subject");
    builder.set_issuer_name(issuer).expect("set issuer");
    builder.set_pubkey(key).expect("set public key");
    let not_before = Asn1Time::from_str("20200101000000Z").expect("not before");
    let not_after = Asn1Time::days_from_now(30).expect("not after");
    builder.set_not_before(&not_before).expect("set not before");
    builder.set_not_after(&not_after).expect("set not after");
    builder
}

fn mint_ca(ca_key: &PKey<Private>) -> X509 {
    let subject = name("agentcom-sidecar test CA");
    let mut builder = builder(&subject, &subject, ca_key);
    builder
        .append_extension(BasicConstraints::new().critical().ca().build().expect("basic constraints"))
        .expect("add basic constraints");
    builder
        .append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().expect("key usage"))
        .expect("add key usage");
    let subject_key_id =
        SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None)).expect("subject key id");
    builder.append_extension(subject_key_id).expect("add subject key id");
    builder.sign(ca_key, MessageDigest::sha256()).expect("self-sign the CA");
    builder.build()
}

fn server_identity(ca_cert: &X509, ca_key: &PKey<Private>, dns_names: &[&str], ips: &[&str]) -> Identity {
    let key = new_key();
    let common_name = dns_names.first().or(ips.first()).copied().unwrap_or("test server");
    let mut builder = builder(&name(common_name), ca_cert.subject_name(), &key);
    builder
        .append_extension(BasicConstraints::new().build().expect("basic constraints"))
        .expect("add basic constraints");
    builder
        .append_extension(
            KeyUsage::new().critical().digital_signature().key_encipherment().build().expect("key usage"),
        )
        .expect("add key usage");
    builder
        .append_extension(ExtendedKeyUsage::new().server_auth().build().expect("extended key usage"))
        .expect("add extended key usage");
    let mut san = SubjectAlternativeName::new();
    for dns_name in dns_names {
        san.dns(dns_name);
    }
    for ip in ips {
        san.ip(ip);
    }
    let san = san.build(&builder.x509v3_context(Some(ca_cert), None)).expect("subject alternative names");
    builder.append_extension(san).expect("add subject alternative names");
    let subject_key_id = SubjectKeyIdentifier::new()
        .build(&builder.x509v3_context(Some(ca_cert), None))
        .expect("subject key id");
    builder.append_extension(subject_key_id).expect("add subject key id");
    let authority_key_id = AuthorityKeyIdentifier::new()
        .keyid(false)
        .build(&builder.x509v3_context(Some(ca_cert), None))
        .expect("authority key id");
    builder.append_extension(authority_key_id).expect("add authority key id");
    builder.sign(ca_key, MessageDigest::sha256()).expect("sign the server certificate");
    let cert = builder.build();

    let cert_pem = cert.to_pem().expect("encode the server certificate as PEM");
    let key_pem = key.private_key_to_pem_pkcs8().expect("encode the server key as PKCS#8 PEM");
    Identity::from_pkcs8(&cert_pem, &key_pem).expect("build the server identity")
}
