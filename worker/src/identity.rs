//! A peer's identity: its ed25519 key, made on first start and kept in the data directory
//! (mode 0600). The PeerId is the public key; attestations are signed with the secret key.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use spare_protocol::{Attestation, PeerId};

/// The file, inside the data directory, that holds the 32-byte secret key.
pub const KEY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The key file is not 32 bytes.
    #[error("key file {path} holds {len} bytes, expected 32")]
    Corrupt { path: String, len: usize },
    /// The system gave no randomness for a new key.
    #[error("no randomness for a new key: {0}")]
    Random(String),
    /// The TLS certificate could not be made from the key.
    #[error("making the TLS certificate: {0}")]
    Tls(String),
}

/// PKCS#8 (v1, RFC 8410) of an ed25519 secret key: this prefix, then the 32 secret bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// This peer's signing key and the PeerId derived from it.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.id.short())
    }
}

impl Identity {
    /// A fresh random identity (tests, the simulator).
    pub fn generate() -> Result<Identity, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Identity::from_secret(secret))
    }

    /// The identity with this secret key.
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        let key = SigningKey::from_bytes(&secret);
        let id = PeerId(key.verifying_key().to_bytes());
        Identity { key, id }
    }

    /// Loads the key from `dir`, or makes one there (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let io = |source| IdentityError::Io { path: shown.clone(), source };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; 32] =
                    bytes.as_slice().try_into().map_err(|_| IdentityError::Corrupt { path: shown.clone(), len: bytes.len() })?;
                Ok(Identity::from_secret(secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity::generate()?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&path).map_err(io)?;
                f.write_all(&identity.key.to_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(identity)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// This peer's TLS certificate, self-signed with the identity key (so the certificate's key
    /// is the PeerId), and that key as PKCS#8.
    pub fn tls_certificate(&self) -> Result<(rustls::pki_types::CertificateDer<'static>, Vec<u8>), IdentityError> {
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&self.key.to_bytes());
        let tls = |e: rcgen::Error| IdentityError::Tls(e.to_string());
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &rcgen::PKCS_ED25519).map_err(tls)?;
        let mut params = rcgen::CertificateParams::new(vec![spare_sdk::tls::SERVER_NAME.to_string()]).map_err(tls)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, self.id.to_hex());
        let cert = params.self_signed(&key).map_err(tls)?;
        Ok((cert.der().clone(), pkcs8))
    }

    /// This peer's id (its public key).
    pub fn peer_id(&self) -> PeerId {
        self.id
    }

    /// Signs arbitrary bytes.
    pub fn sign(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(bytes).to_bytes()
    }

    /// Fills in `att.peer` and `att.signature`.
    pub fn sign_attestation(&self, att: &mut Attestation) {
        att.peer = self.id;
        att.signature = self.sign(&att.signing_bytes()).to_vec();
    }
}

/// Peers' public keys as curve points, by id: making one from its 32 bytes is a point
/// decompression (a field exponentiation), which cost as much as a tenth of a signature check
/// when done for every attestation. Bounded: past [`KEYS_HELD`] it starts over (a flood of fresh
/// keys only costs each its decompression, as without the cache).
static KEYS: std::sync::LazyLock<dashmap::DashMap<PeerId, VerifyingKey>> = std::sync::LazyLock::new(dashmap::DashMap::new);
/// Most keys [`KEYS`] holds.
const KEYS_HELD: usize = 4096;

/// `peer`'s public key as a point (`None`: not a valid key).
fn key_of(peer: &PeerId) -> Option<VerifyingKey> {
    if let Some(k) = KEYS.get(peer) {
        return Some(*k);
    }
    let key = VerifyingKey::from_bytes(peer.as_bytes()).ok()?;
    if KEYS.len() >= KEYS_HELD {
        KEYS.clear();
    }
    KEYS.insert(*peer, key);
    Some(key)
}

/// Whether `signature` is `peer`'s signature of `bytes`.
pub fn verify(peer: &PeerId, bytes: &[u8], signature: &[u8]) -> bool {
    let Some(key) = key_of(peer) else { return false };
    let Ok(sig) = Signature::from_slice(signature) else { return false };
    key.verify(bytes, &sig).is_ok()
}

/// Whether an attestation carries a valid signature of the peer it names.
pub fn verify_attestation(att: &Attestation) -> bool {
    verify(&att.peer, &att.signing_bytes(), &att.signature)
}

/// Signed bytes, signatures and keys of a batch, in order.
type Batch = (Vec<Vec<u8>>, Vec<Signature>, Vec<VerifyingKey>);

/// Which of these attestations carry valid signatures. Checks them as one batch first (about
/// twice as fast per signature), and one by one only when the batch holds a bad one.
pub fn verify_attestations(atts: &[&Attestation]) -> Vec<bool> {
    let parsed: Option<Batch> = atts.iter().try_fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut m, mut s, mut k), a| {
            m.push(a.signing_bytes());
            s.push(Signature::from_slice(&a.signature).ok()?);
            k.push(key_of(&a.peer)?);
            Some((m, s, k))
        },
    );
    if let Some((messages, signatures, keys)) = parsed {
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        if ed25519_dalek::verify_batch(&refs, &signatures, &keys).is_ok() {
            return vec![true; atts.len()];
        }
    }
    atts.iter().map(|a| verify_attestation(a)).collect()
}

/// A peer's TLS 1.3 server configuration: its certificate and PKCS#8 key, and any Spare peer's
/// certificate (or none) from the other side.
pub fn server_config(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(spare_sdk::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(std::sync::Arc::new(spare_sdk::tls::PeerVerifier::new(None)))
        .with_single_cert(vec![cert], rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spare_protocol::{BlobId, JobId, Outcome, ResultKey, TaskId};

    #[test]
    fn the_tls_certificate_carries_the_peer_id() {
        let id = Identity::generate().unwrap();
        let (cert, _) = id.tls_certificate().unwrap();
        assert_eq!(spare_sdk::tls::peer_id_of(&cert), Some(*id.peer_id().as_bytes()));
    }

    #[test]
    fn key_is_kept_and_attestations_verify() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut att = Attestation {
            task: TaskId { job: JobId([1; 32]), index: 3 },
            peer: PeerId([0; 32]),
            result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(b"x") },
            fuel_used: 5,
            signature: vec![],
        };
        a.sign_attestation(&mut att);
        assert!(verify_attestation(&att));
        let good = att.clone();
        att.fuel_used = 6;
        assert!(!verify_attestation(&att), "a changed field breaks the signature");
        assert_eq!(verify_attestations(&[&good, &good]), vec![true, true]);
        assert_eq!(verify_attestations(&[&good, &att, &good]), vec![true, false, true]);
        let mut garbage = good.clone();
        garbage.signature = vec![1, 2, 3];
        assert_eq!(verify_attestations(&[&garbage, &good]), vec![false, true]);
        // Checked again with its key from the cache, and under another peer's name.
        assert_eq!(verify_attestations(&[&good]), vec![true]);
        let mut other = good.clone();
        other.peer = Identity::generate().unwrap().peer_id();
        assert!(!verify_attestation(&other));
        // A peer id that is not a point on the curve is no key, however often it is tried.
        let mut bad = good.clone();
        bad.peer = (0..=255u8).map(|b| PeerId([b; 32])).find(|p| VerifyingKey::from_bytes(p.as_bytes()).is_err()).expect("a non-point");
        assert_eq!((verify_attestation(&bad), verify_attestation(&bad)), (false, false));
    }
}
