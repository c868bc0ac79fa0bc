//! A peer's identity: its ed25519 key, made on first start and kept in the data directory
//! (mode 0600). The PeerId is the public key; attestations are signed with the secret key.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use spare_protocol::attestation_batch as batch;
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

    /// Signs `atts` (this peer's) as one batch: one signature over the root of their Merkle
    /// tree, and each its path (`spare_protocol::attestation_batch`). A single attestation, or
    /// more than a batch may hold, is signed alone.
    pub fn sign_attestations(&self, atts: &mut [Attestation]) {
        for a in atts.iter_mut() {
            a.peer = self.id;
        }
        match (atts.len() > 1).then(|| batch::batch(atts)).flatten() {
            Some((message, paths)) => {
                let sig = self.sign(&message);
                let count = atts.len() as u32;
                for (i, (a, path)) in atts.iter_mut().zip(paths).enumerate() {
                    a.signature = batch::proof(&sig, i as u32, count, &path);
                }
            }
            None => atts.iter_mut().for_each(|a| self.sign_attestation(a)),
        }
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

/// Whether an attestation carries a valid signature of the peer it names (alone, or over the
/// batch it came in: `spare_protocol::attestation_batch`).
pub fn verify_attestation(att: &Attestation) -> bool {
    batch::signed(att).is_some_and(|(message, sig)| verify(&att.peer, &message, sig))
}

/// Which of these attestations carry valid signatures. Attestations signed as one batch share
/// their signed message and signature, so each distinct (signer, message, signature) is
/// checked once; those are checked together first (about twice as fast per signature), and one
/// by one only when that fails.
pub fn verify_attestations(atts: &[&Attestation]) -> Vec<bool> {
    // The distinct checks, and which each attestation needs (`None`: malformed, so invalid).
    // A report batch holds at most a few hundred, most sharing one check: a scan finds it.
    let mut checks: Vec<(PeerId, Vec<u8>, Signature)> = Vec::new();
    let needs: Vec<Option<usize>> = atts
        .iter()
        .map(|a| {
            let (message, sig) = batch::signed(a)?;
            let sig = Signature::from_slice(sig).ok()?;
            let same = |(p, m, s): &(PeerId, Vec<u8>, Signature)| *p == a.peer && *s == sig && *m == message;
            Some(checks.iter().position(same).unwrap_or_else(|| {
                checks.push((a.peer, message, sig));
                checks.len() - 1
            }))
        })
        .collect();
    let one_by_one = |checks: &[(PeerId, Vec<u8>, Signature)]| -> Vec<bool> {
        checks.iter().map(|(p, m, s)| key_of(p).is_some_and(|k| k.verify(m, s).is_ok())).collect()
    };
    let keys: Option<Vec<VerifyingKey>> = checks.iter().map(|(p, _, _)| key_of(p)).collect();
    let valid = match keys {
        Some(keys) if !checks.is_empty() => {
            let messages: Vec<&[u8]> = checks.iter().map(|(_, m, _)| m.as_slice()).collect();
            let signatures: Vec<Signature> = checks.iter().map(|(_, _, s)| *s).collect();
            if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
                vec![true; checks.len()]
            } else {
                one_by_one(&checks)
            }
        }
        _ => one_by_one(&checks),
    };
    needs.into_iter().map(|n| n.is_some_and(|i| valid[i])).collect()
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

    /// Attestations signed as one batch check alone and together; one changed, or one whose
    /// path was moved to another, fails alone, and the rest still pass.
    #[test]
    fn a_batch_signature_covers_each_attestation() {
        let id = Identity::generate().unwrap();
        let mut atts: Vec<Attestation> = (0..5)
            .map(|index| Attestation {
                task: TaskId { job: JobId([1; 32]), index },
                peer: PeerId([0; 32]),
                result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(&index.to_le_bytes()) },
                fuel_used: 0,
                signature: vec![],
            })
            .collect();
        id.sign_attestations(&mut atts);
        assert!(atts.iter().all(|a| a.peer == id.peer_id() && a.signature.len() > 64 && a.signature[..64] == atts[0].signature[..64]));
        assert!(atts.iter().all(verify_attestation));
        let refs: Vec<&Attestation> = atts.iter().collect();
        assert_eq!(verify_attestations(&refs), vec![true; 5]);
        let mut changed = atts.clone();
        changed[1].fuel_used = 9;
        changed[3].signature = atts[4].signature.clone();
        let refs: Vec<&Attestation> = changed.iter().collect();
        assert_eq!(verify_attestations(&refs), vec![true, false, true, false, true]);
        // One alone is signed alone.
        let mut one = vec![atts[0].clone()];
        id.sign_attestations(&mut one);
        assert_eq!(one[0].signature.len(), 64);
        assert!(verify_attestation(&one[0]));
    }
}
