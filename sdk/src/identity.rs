//! The submitter's key ([`ClientIdentity`]) and how Submit and Cancel are signed with it: the
//! byte layout `proto/spare/v1/common.proto` documents (`ClientSignature`), shared with the
//! peer, which checks it with the same functions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;

use crate::proto;
use crate::{Error, Result};

/// The file, under the client's config directory, that holds the 32-byte secret key.
pub const CLIENT_KEY_FILE: &str = "client.key";
/// The environment variable naming another key file.
pub const IDENTITY_ENV: &str = "SPARE_IDENTITY";
/// Length of a [`proto::ClientSignature`]'s nonce.
pub const SIGNATURE_NONCE_BYTES: usize = 16;

/// Domain tag of a client's signature (see `ClientSignature` in the proto).
const CLIENT_TAG: &[u8] = b"spare.v1.client\0";

/// The request a client signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedMethod {
    /// `JobService.Submit`.
    Submit,
    /// `JobService.Cancel`.
    Cancel,
}

impl SignedMethod {
    /// The method name as it is signed.
    pub fn name(self) -> &'static str {
        match self {
            SignedMethod::Submit => "Submit",
            SignedMethod::Cancel => "Cancel",
        }
    }
}

/// A submitter's ed25519 key: jobs it submits are owned by its public key, and only it can cancel
/// them. Made on first use (mode 0600) at [`ClientIdentity::default_path`].
#[derive(Clone)]
pub struct ClientIdentity {
    key: SigningKey,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIdentity({})", hex::encode(&self.public_key()[..4]))
    }
}

/// The client's config directory: `$XDG_CONFIG_HOME/spare`, else `$HOME/.config/spare`.
pub fn config_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("spare"))
}

impl ClientIdentity {
    /// Where the key is kept unless told otherwise: `$SPARE_IDENTITY`, else `client.key` in
    /// [`config_dir`].
    pub fn default_path() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(IDENTITY_ENV).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        config_dir().map(|d| d.join(CLIENT_KEY_FILE)).ok_or_else(|| {
            Error::Identity(format!(
                "no place for the client key: set {IDENTITY_ENV}, XDG_CONFIG_HOME or HOME"
            ))
        })
    }

    /// The key at [`default_path`](Self::default_path), made there on first use.
    pub fn load_default() -> Result<ClientIdentity> {
        ClientIdentity::load_or_create(&Self::default_path()?)
    }

    /// The key in `path` (32 raw bytes), made there (mode 0600, directories 0700) when the file
    /// does not exist.
    pub fn load_or_create(path: &Path) -> Result<ClientIdentity> {
        let err = |what: &str, e: std::io::Error| {
            Error::Identity(format!("{what} the client key {}: {e}", path.display()))
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::Identity(format!(
                        "the client key {} holds {} bytes, expected 32",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                Ok(ClientIdentity {
                    key: SigningKey::from_bytes(&secret),
                    path: Some(path.to_path_buf()),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut fresh = ClientIdentity::generate()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    let mut b = std::fs::DirBuilder::new();
                    b.recursive(true);
                    #[cfg(unix)]
                    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
                    b.create(dir).map_err(|e| err("making the directory of", e))?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                match opts.open(path) {
                    Ok(mut f) => {
                        f.write_all(&fresh.key.to_bytes())
                            .and_then(|_| f.sync_all())
                            .map_err(|e| err("writing", e))?;
                        fresh.path = Some(path.to_path_buf());
                        Ok(fresh)
                    }
                    // Another process made it first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        ClientIdentity::load_or_create(path)
                    }
                    Err(e) => Err(err("creating", e)),
                }
            }
            Err(e) => Err(err("reading", e)),
        }
    }

    /// A fresh key kept nowhere (tests, short-lived clients).
    pub fn generate() -> Result<ClientIdentity> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(Error::Random)?;
        Ok(ClientIdentity {
            key: SigningKey::from_bytes(&secret),
            path: None,
        })
    }

    /// The public key: the owner of the jobs this identity submits.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key in hex, as `spare whoami` and job statuses show it.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// The file the key was read from or written to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A signature of `method` with body digest `body`, for the peer `receiver`, now.
    pub fn sign(
        &self,
        method: SignedMethod,
        body: &[u8; 32],
        receiver: &[u8; 32],
    ) -> Result<proto::ClientSignature> {
        let mut nonce = vec![0u8; SIGNATURE_NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(Error::Random)?;
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let bytes = signing_bytes(method, body, timestamp_ms, &nonce, receiver);
        Ok(proto::ClientSignature {
            key: self.public_key().to_vec(),
            timestamp_ms,
            nonce,
            signature: self.key.sign(&bytes).to_bytes().to_vec(),
        })
    }

    /// Signs a Submit for the peer `receiver` (fills `auth`).
    pub fn sign_submit(&self, req: &mut proto::SubmitRequest, receiver: &[u8; 32]) -> Result<()> {
        req.auth = Some(self.sign(SignedMethod::Submit, &submit_body(req), receiver)?);
        Ok(())
    }

    /// Signs a Cancel for the peer `receiver` (fills `auth`).
    pub fn sign_cancel(&self, req: &mut proto::CancelRequest, receiver: &[u8; 32]) -> Result<()> {
        req.auth = Some(self.sign(SignedMethod::Cancel, &cancel_body(req), receiver)?);
        Ok(())
    }
}

/// The bytes a client's signature covers (layout in `ClientSignature`, common.proto).
pub fn signing_bytes(
    method: SignedMethod,
    body: &[u8; 32],
    timestamp_ms: u64,
    nonce: &[u8],
    receiver: &[u8; 32],
) -> Vec<u8> {
    let name = method.name().as_bytes();
    let mut b = Vec::with_capacity(CLIENT_TAG.len() + name.len() + 1 + 32 + 8 + nonce.len() + 32);
    b.extend_from_slice(CLIENT_TAG);
    b.extend_from_slice(name);
    b.push(0);
    b.extend_from_slice(body);
    b.extend_from_slice(&timestamp_ms.to_le_bytes());
    b.extend_from_slice(nonce);
    b.extend_from_slice(receiver);
    b
}

/// The digest a Submit's signature covers: the request without its `auth`.
pub fn submit_body(req: &proto::SubmitRequest) -> [u8; 32] {
    let unsigned = proto::SubmitRequest {
        auth: None,
        ..req.clone()
    };
    *blake3::hash(&unsigned.encode_to_vec()).as_bytes()
}

/// The digest a Cancel's signature covers: the request without its `auth` and `forwarded`.
pub fn cancel_body(req: &proto::CancelRequest) -> [u8; 32] {
    let unsigned = proto::CancelRequest {
        job_id: req.job_id.clone(),
        auth: None,
        forwarded: Vec::new(),
    };
    *blake3::hash(&unsigned.encode_to_vec()).as_bytes()
}

/// Whether `sig` is a valid signature by its key of `method` with digest `body` for `receiver`
/// (the nonce's length included; the clock and replays are the receiver's to check).
pub fn verify(
    method: SignedMethod,
    body: &[u8; 32],
    sig: &proto::ClientSignature,
    receiver: &[u8; 32],
) -> bool {
    if sig.nonce.len() != SIGNATURE_NONCE_BYTES {
        return false;
    }
    let Ok(key) = <[u8; 32]>::try_from(sig.key.as_slice()) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(&sig.signature) else {
        return false;
    };
    let bytes = signing_bytes(method, body, sig.timestamp_ms, &sig.nonce, receiver);
    key.verify(&bytes, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/spare/client.key");
        let a = ClientIdentity::load_or_create(&path).unwrap();
        let b = ClientIdentity::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(b.path(), Some(path.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        let e = ClientIdentity::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("holds 5 bytes"), "{e}");
    }

    #[test]
    fn a_signature_binds_request_method_and_receiver() {
        let id = ClientIdentity::generate().unwrap();
        let (here, there) = ([1u8; 32], [2u8; 32]);
        let mut req = proto::CancelRequest {
            job_id: "ab".repeat(32),
            ..Default::default()
        };
        id.sign_cancel(&mut req, &here).unwrap();
        let sig = req.auth.clone().unwrap();
        let body = cancel_body(&req);
        assert!(verify(SignedMethod::Cancel, &body, &sig, &here));
        assert!(!verify(SignedMethod::Cancel, &body, &sig, &there), "another peer");
        assert!(!verify(SignedMethod::Submit, &body, &sig, &here), "another method");
        let other = cancel_body(&proto::CancelRequest {
            job_id: "cd".repeat(32),
            ..Default::default()
        });
        assert!(!verify(SignedMethod::Cancel, &other, &sig, &here), "another job");
        let later = proto::ClientSignature {
            timestamp_ms: sig.timestamp_ms + 1,
            ..sig.clone()
        };
        assert!(!verify(SignedMethod::Cancel, &body, &later, &here), "another time");
        // Forwarding entries are not part of what the client signs.
        req.forwarded.push(proto::Forward::default());
        assert_eq!(cancel_body(&req), body);
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let b = signing_bytes(SignedMethod::Submit, &[3; 32], 0x0102, &[4; 16], &[5; 32]);
        let mut want = b"spare.v1.client\0Submit\0".to_vec();
        want.extend_from_slice(&[3; 32]);
        want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[4; 16]);
        want.extend_from_slice(&[5; 32]);
        assert_eq!(b, want);
    }
}
