//! TLS client settings for a broker connection, from PEM files: the CA to
//! trust (or the system's roots) and, for mutual TLS, a client certificate
//! and key, as AWS IoT Core, Azure IoT Hub and most cloud brokers require.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: cannot read {path}: {error}")]
    Pem { path: String, error: String },
    #[error("TLS: {path} holds no certificate")]
    NoCertificate { path: String },
    #[error("TLS: no usable CA certificates (none in the file, or the system has none)")]
    NoRoots,
    #[error("TLS: client certificate and key do not work together: {0}")]
    ClientAuth(String),
}

/// Builds the rustls configuration once, at start, so that a bad file is a
/// start-up error and not a reconnect loop.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    // ring, installed once for the process; a second install is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            let certs = read_certs(ca)?;
            roots.add_parsable_certificates(certs);
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
                path: key.display().to_string(),
                error: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::ClientAuth(e.to_string()))?
        }
        // Config validation requires both or neither.
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |error: String| TlsError::Pem {
        path: path.display().to_string(),
        error,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_a_clear_error() {
        let tls = TlsConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            cert: None,
            key: None,
        };
        let error = client_config(&tls).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let tls = TlsConfig {
            ca: Some(path),
            cert: None,
            key: None,
        };
        assert!(matches!(
            client_config(&tls),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn generated_ca_and_client_certificate_make_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["gateway".into()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let tls = TlsConfig {
            ca: Some(write("ca.pem", ca.pem())),
            cert: Some(write("client.pem", client.pem())),
            key: Some(write("client.key", client_key.serialize_pem())),
        };
        client_config(&tls).expect("valid mTLS config");
    }
}
