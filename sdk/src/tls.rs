//! TLS 1.3 between Spare peers and to their clients, with no certificate authority: a peer's
//! certificate is self-signed and its key *is* the peer's ed25519 identity key, so the PeerId is
//! read from the certificate and the handshake proves the other side holds that key (as libp2p's
//! TLS handshake does). The verifier here serves both ends: a client (or a dialling peer) checks
//! the PeerId it expects; a peer's port (spare-peer's `service/listener.rs`) accepts any such
//! certificate from a dialling peer and reports its PeerId, which the mesh then compares with
//! who signed each request. The client configuration and connector are used by the SDK and by
//! peers dialling peers.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The DER of an ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// The name a client gives in its hello (peers are checked by PeerId, never by name).
pub const SERVER_NAME: &str = "spare";
/// The first byte of every TLS connection (a handshake record): how a peer tells TLS from
/// plaintext HTTP/2 on its one port.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The crypto the TLS configurations use: rustls with ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PeerId a certificate carries: the key of its SubjectPublicKeyInfo, when that is an
/// ed25519 key (anything else is not a Spare peer's certificate).
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    key.try_into().ok()
}

fn bad_cert(why: &str) -> rustls::Error {
    rustls::Error::General(why.to_string())
}

/// Checks that the handshake was signed (TLS 1.3, ed25519) by the certificate's key.
fn verify_signature(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(bad_cert("a Spare peer signs its handshake with its ed25519 identity key"));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

/// Where a verifier keeps the PeerId of the certificate it last saw.
pub type SeenPeer = Arc<Mutex<Option<[u8; 32]>>>;

/// Accepts a certificate that carries an ed25519 PeerId, and the one expected when one is;
/// remembers the PeerId seen (for trust on first use).
#[derive(Debug)]
pub struct PeerVerifier {
    expected: Option<[u8; 32]>,
    seen: SeenPeer,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// A verifier that wants `expected` (`None`: any PeerId, recorded in [`seen`](Self::seen)).
    pub fn new(expected: Option<[u8; 32]>) -> PeerVerifier {
        PeerVerifier {
            expected,
            seen: Default::default(),
            algs: provider().signature_verification_algorithms,
        }
    }

    /// Where the PeerId of the last certificate accepted is kept.
    pub fn seen(&self) -> SeenPeer {
        self.seen.clone()
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let id = peer_id_of(cert).ok_or_else(|| bad_cert("the certificate's key is not an ed25519 PeerId"))?;
        // Kept even when refused, so the caller can say which PeerId it met instead.
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(id);
        }
        if let Some(want) = self.expected
            && want != id
        {
            return Err(bad_cert(&format!(
                "the peer presented PeerId {}, not the expected {}",
                hex::encode(id),
                hex::encode(want)
            )));
        }
        Ok(())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(bad_cert("Spare speaks TLS 1.3 only"))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    // Clients (the CLI, the SDK) present no certificate; dialling peers do.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(bad_cert("Spare speaks TLS 1.3 only"))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A TLS 1.3 client configuration that accepts the peer `expected` (any Spare peer when `None`),
/// presenting `identity` (certificate and PKCS#8 key) when given (peers do; clients do not).
/// Returns the configuration and where the PeerId it accepted is kept.
pub fn client_config(
    expected: Option<[u8; 32]>,
    identity: Option<(CertificateDer<'static>, Vec<u8>)>,
) -> Result<(rustls::ClientConfig, SeenPeer), rustls::Error> {
    let verifier = PeerVerifier::new(expected);
    let seen = verifier.seen();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(
            vec![cert],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, seen))
}

/// Whether `host` (of `host:port`) names this machine: the only place a peer takes plaintext.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A TLS connection as tonic's channel reads and writes it.
pub type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TlsIo>> + Send>>;

/// A connector for [`tonic::transport::Endpoint::connect_with_connector`]: dials the URI's
/// host and port (the endpoint's `http://` scheme only tells tonic not to do TLS itself) and
/// speaks TLS with `config`.
pub fn connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<tonic::codegen::http::Uri, Response = TlsIo, Error = std::io::Error, Future = Connecting>
+ Clone
+ Send
+ 'static {
    connector_from(config, None)
}

/// [`connector`], with its connections made from the local address `local` when given (a
/// multi-homed peer asking from the address it advertises); the destination is the first
/// address of the URI's host of the same family.
pub fn connector_from(
    config: Arc<rustls::ClientConfig>,
    local: Option<std::net::IpAddr>,
) -> impl tower::Service<tonic::codegen::http::Uri, Response = TlsIo, Error = std::io::Error, Future = Connecting>
+ Clone
+ Send
+ 'static {
    let tls = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: tonic::codegen::http::Uri| -> Connecting {
        let tls = tls.clone();
        Box::pin(async move {
            let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} in {uri}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let tcp = match local {
                None => tokio::net::TcpStream::connect((host.as_str(), port)).await?,
                Some(local) => {
                    let to = tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .find(|a| a.is_ipv4() == local.is_ipv4())
                        .ok_or_else(|| invalid("no address of the local address's family"))?;
                    let socket = if local.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                    socket.bind(std::net::SocketAddr::new(local, 0))?;
                    socket.connect(to).await?
                }
            };
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(SERVER_NAME).map_err(|e| std::io::Error::other(e.to_string()))?;
            let stream = tls.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "localhost", "[::1]", "::1", "127.3.2.1"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["10.0.0.1", "example.org", "[2001:db8::1]"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
