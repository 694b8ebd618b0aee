//! Windows stand-in for `tls.rs`: the test CA is minted with OpenSSL, a
//! Unix-only dev-dependency (native-tls uses SChannel on Windows). The TLS
//! tests are `#[ignore]`d there with that reason; run anyway, they fail
//! here rather than pass without having tried.

use std::path::{Path, PathBuf};

use native_tls::TlsAcceptor;

pub const UNAVAILABLE: &str = "the test CA is minted with OpenSSL, a Unix-only dev-dependency";

pub struct TestCa {
    pub ca_file: PathBuf,
}

impl TestCa {
    pub fn new(_dir: &Path) -> TestCa {
        panic!("{UNAVAILABLE}")
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        panic!("{UNAVAILABLE}")
    }

    pub fn acceptor_for_other_name(&self, _dns_name: &str) -> TlsAcceptor {
        panic!("{UNAVAILABLE}")
    }
}
