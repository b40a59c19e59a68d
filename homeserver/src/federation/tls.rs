//! TLS for federation, with one crypto provider (ring): the listener's configuration (TLS 1.3
//! only), the outbound client's (system roots plus the operator's extra CA files; no checks only
//! when `federation.verify_tls = false`), and `hearth generate-dev-cert`.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Makes ring the process's default provider, for any rustls user that asks for the default.
pub fn install_default_provider() {
    let _ = ring::default_provider().install_default();
}

/// The federation listener's TLS: the certificate chain and key from PEM files, TLS 1.3 only,
/// HTTP/2 and HTTP/1.1.
pub fn server_config(certificate: &Path, private_key: &Path) -> anyhow::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("federation.tls_certificate {}", certificate.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "federation.tls_certificate {} holds no certificate",
            certificate.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(private_key)
        .with_context(|| format!("federation.tls_private_key {}", private_key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("federation TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An outbound client's TLS: the system's roots plus `ca_files` (the setting named `setting`),
/// or no certificate checks at all when `verify` is false.
pub fn client_config(
    verify: bool,
    ca_files: &[std::path::PathBuf],
    setting: &str,
) -> anyhow::Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    // ALPN (h2, http/1.1) is set by the HTTPS connector.
    let config = if verify {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "cannot read a system CA certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system CA certificates");
        for file in ca_files {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("{setting}: {}", file.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{setting}: {} holds no certificate", file.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("{setting}: {}", file.display()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!("federation.verify_tls = false: other servers' certificates are not checked");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    };
    Ok(config)
}

/// Accepts any certificate (still checking that the handshake is signed by its key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Writes a self-signed certificate for `server_name` (its host; `localhost` and `127.0.0.1`
/// too) and its private key as PEM files, for local use and tests.
pub fn generate_dev_cert(server_name: &str, certificate: &Path, private_key: &Path) -> anyhow::Result<()> {
    let name = ruma::ServerName::parse(server_name).context("invalid server name")?;
    let host = name
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let mut names = vec![host];
    for extra in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.host().to_owned());
    let cert = params.self_signed(&key)?;
    write_private(private_key, key.serialize_pem().as_bytes())?;
    std::fs::write(certificate, cert.pem()).with_context(|| format!("write {}", certificate.display()))?;
    Ok(())
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}
