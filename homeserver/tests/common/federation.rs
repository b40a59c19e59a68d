//! Pieces shared by the federation tests.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{PrivateKeyDer, pem::PemObject},
};

/// A TLS front for a plain-HTTP mock server (wiremock speaks HTTP/1.1 only), with a self-signed
/// certificate for `names`; returns its port and the certificate, for the server under test to
/// trust (`federation.ca_files`).
pub async fn tls_front(upstream: SocketAddr, names: &[&str], dir: &Path) -> (u16, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let ca = dir.join("front.crt");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes()).unwrap();
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await
                    && let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    (port, ca)
}

/// `hearth generate-dev-cert` for `server_name`, written in `dir` as `<name>.crt` and
/// `<name>.key`; returns their paths.
pub fn dev_cert(dir: &Path, server_name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{server_name}.crt"));
    let key = dir.join(format!("{server_name}.key"));
    let status = super::hearth_command()
        .args(["generate-dev-cert", "--server-name", server_name, "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .status()
        .expect("run hearth generate-dev-cert");
    assert!(status.success());
    (cert, key)
}

/// `hs-b.test`: a Hearth with federation on, privacy mode `none` by default and rate limits
/// off, that trusts `front_ca` and finds each of `fakes` at the TLS front on port `front`;
/// returns it and its federation port.
pub async fn hearth_with_fakes(
    certs: &Path,
    fakes: &[&str],
    front: u16,
    front_ca: &Path,
) -> (super::Server, u16) {
    let resolve: String = fakes
        .iter()
        .map(|n| format!("\"{n}\" = \"127.0.0.1:{front}\"\n"))
        .collect();
    let fed_port = super::free_port();
    let (server_cert, server_key) = dev_cert(certs, "hs-b.test");
    let server = super::Server::start_named(
        super::Backend::from_env(),
        "hs-b.test",
        "",
        &format!("enabled = false\n{}", super::RATE_LIMIT_FIELDS),
        &format!(
            "[privacy]\ndefault_mode = \"none\"\n\
             [federation]\nenabled = true\nlisten = \"127.0.0.1:{fed_port}\"\n\
             tls_certificate = \"{}\"\ntls_private_key = \"{}\"\n\
             allow_ip_ranges = [\"127.0.0.1/32\"]\nca_files = [\"{}\"]\n\
             [federation.resolve]\n{resolve}",
            server_cert.display(),
            server_key.display(),
            front_ca.display()
        ),
    )
    .await;
    (server, fed_port)
}
