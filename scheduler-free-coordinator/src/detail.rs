//! [`Detail`]: what a run said besides its result, for people. It is never signed with the
//! attestation and never compared by a quorum, so two runs that agree on a result agree
//! whatever they said here.

/// Most bytes of each part of a [`Detail`] (the tail is kept: the end of stderr says why).
pub const DETAIL_BYTES: usize = 4 << 10;

/// Which trap or limit ended a run, and the tail of its stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detail {
    /// Which trap or limit ended it.
    pub message: String,
    /// The tail of its stderr (at most [`DETAIL_BYTES`]).
    pub stderr: String,
}

impl Detail {
    /// A detail from another peer, each part cut to its last [`DETAIL_BYTES`].
    pub fn bounded(message: &str, stderr: &str) -> Detail {
        Detail { message: tail_text(message.as_bytes(), DETAIL_BYTES), stderr: tail_text(stderr.as_bytes(), DETAIL_BYTES) }
    }
}

/// The last `max` bytes of `bytes` as text (invalid UTF-8 replaced), starting on a character
/// boundary.
pub fn tail_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]).into_owned();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_text_keeps_the_end_on_a_character_boundary() {
        assert_eq!(tail_text(b"hello", 10), "hello");
        assert_eq!(tail_text(b"hello", 3), "llo");
        // "é" is two bytes: a cut through it drops the half character.
        assert_eq!(tail_text("aéb".as_bytes(), 3), "éb");
        assert_eq!(tail_text("aéb".as_bytes(), 2), "b");
        assert!(tail_text(&[0xff; 10], 4).len() <= 4, "invalid UTF-8 is replaced, still within the bound");
    }

    #[test]
    fn a_bounded_detail_keeps_each_parts_tail() {
        let long = "x".repeat(DETAIL_BYTES + 10) + "end";
        let d = Detail::bounded(&long, "short");
        assert_eq!(d.message.len(), DETAIL_BYTES);
        assert!(d.message.ends_with("end"));
        assert_eq!(d.stderr, "short");
    }
}
