//! TLS settings from PEM files, both ends. As a client of a broker: the CA
//! to trust (or the system's roots) and, for mutual TLS, a client certificate
//! and key, as AWS IoT Core, Azure IoT Hub and most cloud brokers require. As
//! the embedded broker's TLS listener: its certificate and key and, for
//! mutual TLS, the CA whose certificates devices must present.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
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
    #[error("TLS: the listener's certificate and key do not work together: {0}")]
    ServerCert(String),
    #[error("TLS: cannot check device certificates against {path}: {error}")]
    ClientCa { path: String, error: String },
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
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::ClientAuth(e.to_string()))?
        }
        // Config validation requires both or neither.
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The embedded broker's TLS listener, built once per broker start so that
/// a bad file is a start-up error naming the file. With `client_ca`, a
/// device must present a certificate that chains to it (mutual TLS); without,
/// any device may open TLS and is then asked only for its password.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::ServerCert(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let ca_error = |error: String| TlsError::ClientCa {
                path: ca.display().to_string(),
                error,
            };
            let mut roots = RootCertStore::empty();
            let (_, unusable) = roots.add_parsable_certificates(read_certs(ca)?);
            if roots.is_empty() {
                return Err(ca_error(format!(
                    "none of its {unusable} certificates is a usable CA"
                )));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::ServerCert(e.to_string()))?;
    Ok(Arc::new(config))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        error: e.to_string(),
    })
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

    /// A CA and a certificate it signed for "127.0.0.1", as PEM files in `dir`.
    fn ca_and_leaf(
        dir: &Path,
        prefix: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(format!("{prefix}{name}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        (
            write("ca.pem", ca.pem()),
            write("cert.pem", leaf.pem()),
            write("key.pem", key.serialize_pem()),
        )
    }

    #[test]
    fn a_listener_config_with_and_without_device_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = ca_and_leaf(dir.path(), "");
        server_config(&cert, &key, None).expect("TLS without client certificates");
        server_config(&cert, &key, Some(&ca)).expect("mutual TLS");
    }

    #[test]
    fn a_listener_whose_key_is_not_its_certificates_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, _) = ca_and_leaf(dir.path(), "a-");
        let (_, _, other_key) = ca_and_leaf(dir.path(), "b-");
        let error = server_config(&cert, &other_key, None).unwrap_err();
        assert!(matches!(error, TlsError::ServerCert(_)), "{error}");
    }

    #[test]
    fn a_device_ca_file_without_certificates_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = ca_and_leaf(dir.path(), "");
        let ca = dir.path().join("devices-ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let error = server_config(&cert, &key, Some(&ca)).unwrap_err();
        assert!(error.to_string().contains("devices-ca.pem"), "{error}");
    }
}
