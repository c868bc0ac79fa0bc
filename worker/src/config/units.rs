//! Sizes and durations as a person writes them (`64 MiB`, `3 days`), in the config file, the
//! environment and on flags: [`Size`] parses through `bytesize`, [`Span`] through `humantime`.
//! Both write themselves back exactly (a size is never rounded to one decimal), so a value read
//! from one layer and shown by `--print-config` is the value in force.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes: `1048576`, `512 KiB`, `64 MiB`, `4 GiB`, `1.5GB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// The bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Size(n));
        }
        bytesize::ByteSize::from_str(s)
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("{s:?} is not a size ({e}); write e.g. 512 MiB, 4 GiB or a number of bytes"))
    }
}

impl fmt::Display for Size {
    /// The largest binary unit that divides the size exactly, so the text parses back to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{} {name}", self.0 / unit);
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        // A bare number (TOML integer, or an environment variable figment read as one) is bytes.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration: `90s`, `15min`, `3days`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Span, String> {
        humantime::parse_duration(s.trim())
            .map(Span)
            .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 90s, 15min or 3days"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_print_back_exactly() {
        assert_eq!("64 MiB".parse::<Size>(), Ok(Size(64 << 20)));
        assert_eq!("4GiB".parse::<Size>(), Ok(Size(4 << 30)));
        assert_eq!("1500".parse::<Size>(), Ok(Size(1500)));
        assert_eq!("1 GB".parse::<Size>(), Ok(Size(1_000_000_000)));
        assert!("lots".parse::<Size>().is_err());
        for n in [0, 1, 1500, 1_500_000, 64 << 20, 4 << 30, (3 << 30) + 1] {
            let text = Size(n).to_string();
            assert_eq!(text.parse::<Size>(), Ok(Size(n)), "{text}");
        }
        assert_eq!(Size(4 << 30).to_string(), "4 GiB");
    }

    #[test]
    fn spans_parse_with_units_and_print_back_exactly() {
        assert_eq!("3days".parse::<Span>(), Ok(Span(Duration::from_secs(3 * 86_400))));
        assert_eq!("90s".parse::<Span>(), Ok(Span(Duration::from_secs(90))));
        assert!("soon".parse::<Span>().is_err());
        let s = Span(Duration::from_secs(3 * 86_400 + 61));
        assert_eq!(s.to_string().parse::<Span>(), Ok(s));
    }
}
