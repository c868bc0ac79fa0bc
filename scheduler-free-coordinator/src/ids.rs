//! Identifiers: 32-byte names shown as lowercase hex (PeerId, JobId, BlobId) and TaskId.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hex string that is not a 32-byte id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 64-character hex id: {0:?}")]
pub struct ParseIdError(pub String);

macro_rules! id32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hex, 64 characters. Written into a buffer: `hex::encode` collects one
            /// `char` at a time, and ids are encoded for every message on the wire (4 % of a
            /// busy peer's async CPU).
            pub fn to_hex(&self) -> String {
                let mut buf = [0u8; 64];
                // 32 bytes always fill exactly 64 digits, which are ASCII.
                let _ = hex::encode_to_slice(self.0, &mut buf);
                std::str::from_utf8(&buf).map(str::to_owned).unwrap_or_default()
            }
            /// The first 8 hex characters, for logs and summaries.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseIdError(s.to_string()))?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

id32!(
    /// A peer: its ed25519 public key.
    PeerId
);
id32!(
    /// A job, derived from its origin, its content and a nonce (see [`crate::JobSpec::derive_id`]).
    JobId
);
id32!(
    /// Content-addressed bytes: the BLAKE3 hash of the blob.
    BlobId
);

impl BlobId {
    /// The id of these bytes.
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId(*blake3::hash(bytes).as_bytes())
    }
}

/// One input of a job: the job and the task's index in it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct TaskId {
    /// The job the task belongs to.
    pub job: JobId,
    /// Position of the task's input in the job, from 0.
    pub index: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job.short(), self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_hex_is_lowercase_hex_of_every_byte() {
        let mut bytes = [0u8; 32];
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(37).wrapping_add(250));
        assert_eq!(PeerId(bytes).to_hex(), hex::encode(bytes));
        assert_eq!(JobId([0xab; 32]).to_hex(), "ab".repeat(32));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let id = BlobId::of(b"spare");
        assert_eq!(id.to_hex().parse::<BlobId>(), Ok(id));
        assert!("zz".parse::<JobId>().is_err());
        assert!("ab".repeat(31).parse::<PeerId>().is_err());
    }
}
