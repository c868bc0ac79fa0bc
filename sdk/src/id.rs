//! [`JobId`]: the name of a submitted job, 64 lowercase hex characters.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Length of a job id (and of a blob id) in hex characters: a 32-byte hash.
pub const ID_HEX_LEN: usize = 64;

/// A job's id as the mesh names it: 64 lowercase hex characters.
///
/// Parse one with [`str::parse`] (surrounding whitespace is ignored and upper case is accepted,
/// then normalised to lower case); it displays as the hex string.
///
/// ```
/// use spare_sdk::JobId;
/// let id: JobId = "AB".repeat(32).parse()?;
/// assert_eq!(id.as_str(), "ab".repeat(32));
/// assert!("not-an-id".parse::<JobId>().is_err());
/// # Ok::<(), spare_sdk::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// The id as 64 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 hex characters, for progress lines and logs.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// True when `s` is a 32-byte id in hex (either case).
pub(crate) fn is_hex_id(s: &str) -> bool {
    s.len() == ID_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl FromStr for JobId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if is_hex_id(trimmed) {
            Ok(JobId(trimmed.to_ascii_lowercase()))
        } else {
            Err(Error::InvalidId(s.to_string()))
        }
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let hex = "0123456789abcdef".repeat(4);
        let id: JobId = format!("  {}\n", hex.to_uppercase())
            .parse()
            .expect("valid id");
        assert_eq!(id.as_str(), hex);
        assert_eq!(id.to_string(), hex);
        assert_eq!(id.short(), "01234567");
        assert_eq!(JobId::try_from(hex.clone()).expect("valid id"), id);
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "abc",
            &"a".repeat(63),
            &"a".repeat(65),
            &format!("{}g", "a".repeat(63)),
        ] {
            match bad.parse::<JobId>() {
                Err(Error::InvalidId(s)) => assert_eq!(s, bad),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        // Multi-byte characters must not be mistaken for hex or panic on slicing.
        assert!("é".repeat(32).parse::<JobId>().is_err());
    }
}
