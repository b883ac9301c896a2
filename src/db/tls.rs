//! TLS to PostgreSQL (rustls, with the `ring` provider), used by every connection source.
//!
//! `sslmode` in `DATABASE_URL` decides whether TLS is used, as with libpq:
//! - `disable`: never;
//! - `prefer` (the default): when the server offers it;
//! - `require`: always; a server without TLS is an error (503, logged).
//!
//! What is checked follows libpq too. With `DATABASE_CA_FILE` (PEM), the server's
//! certificate must chain to one of its certificates and name the host, like libpq's
//! `sslmode=verify-full` with `sslrootcert` (tokio-postgres does not parse those two
//! keys, so the file comes through the environment); a CA file makes TLS required
//! (the default `prefer` becomes `require`, `disable` is refused): else a
//! man-in-the-middle could answer "no TLS" and be sent the password in the clear.
//! `channel_binding=require` in the URL (tokio-postgres parses it) binds SCRAM
//! authentication to the TLS channel. Without it the connection is
//! encrypted but the server is not authenticated, like libpq's `sslmode=require`: the
//! handshake's signatures are still checked, the certificate's issuer is not.
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// What every source hands to `tokio_postgres::Config::connect`.
pub type Connector = MakeRustlsConnect;

/// With a CA file, TLS is required (see the module's comment).
pub fn require_with_ca_file(pg: &mut tokio_postgres::Config, ca_file: bool) -> Result<(), String> {
    use tokio_postgres::config::SslMode;
    if !ca_file {
        return Ok(());
    }
    match pg.get_ssl_mode() {
        SslMode::Disable => Err(
            "DATABASE_CA_FILE is set but DATABASE_URL says sslmode=disable: a CA file is for \
             checking a TLS server; remove one of them"
                .into(),
        ),
        SslMode::Prefer => {
            pg.ssl_mode(SslMode::Require);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The connector for `ca_file` (see the module's comment).
pub fn connector(ca_file: Option<&Path>) -> Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match ca_file {
        Some(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates of a PEM file, as trust anchors.
fn roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("DATABASE_CA_FILE: cannot read {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("DATABASE_CA_FILE: {shown} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("DATABASE_CA_FILE: {shown} holds no certificate"));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| format!("DATABASE_CA_FILE: {shown}: {e}"))?;
    }
    Ok(store)
}

/// libpq's `sslmode=require` without a root certificate: any certificate is accepted,
/// but the handshake must be signed by the key of the certificate the server sent.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let missing = connector(Some(Path::new("/nonexistent/ca.pem"))).err();
        assert!(missing.is_some_and(|e| e.starts_with("DATABASE_CA_FILE: cannot read")));
        let dir = std::env::temp_dir().join(format!("perflab-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let err = connector(Some(&empty)).err().unwrap_or_default();
        std::fs::remove_dir_all(&dir).ok();
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[test]
    fn without_a_ca_file_the_connector_is_built() {
        assert!(connector(None).is_ok());
    }
}
