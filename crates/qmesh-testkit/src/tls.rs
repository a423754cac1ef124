//! Test certificates made with the `openssl` command: a CA and server
//! certificates it signs, valid for `localhost` and `127.0.0.1`, as PEM
//! files in a directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl CertFiles {
    /// The certificate's path as text (for command lines).
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().expect("UTF-8 path")
    }

    /// The key's path as text (for command lines).
    pub fn key_str(&self) -> &str {
        self.key.to_str().expect("UTF-8 path")
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A self-signed CA called `name` in `dir` (`name.pem`, `name.key`; P-256).
pub fn make_ca(dir: &Path, name: &str) -> CertFiles {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    CertFiles { cert: dir.join(cert), key: dir.join(key) }
}

/// A server certificate called `name` signed by `ca`, in `dir` (`name.pem`,
/// `name.key`), for `localhost` and `127.0.0.1`. Each has its own random
/// serial number, so two made in a row differ.
pub fn make_server_cert(dir: &Path, ca: &CertFiles, name: &str) -> CertFiles {
    let (cert, key, csr, ext) =
        (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the extensions file");
    let ca_cert = ca.cert.to_str().expect("UTF-8 path");
    let ca_key = ca.key.to_str().expect("UTF-8 path");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_cert,
            "-CAkey",
            ca_key,
            "-set_serial",
            &serial(),
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    CertFiles { cert: dir.join(cert), key: dir.join(key) }
}

/// A serial number unlikely to repeat: the time in nanoseconds and the pid.
fn serial() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}", nanos ^ u128::from(std::process::id()) << 64)
}
