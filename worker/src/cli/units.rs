//! Parsers of the command line's values, so a wrong value is refused before anything runs, with
//! one line that says what is expected: sizes with units (`256MiB`, by `bytesize`), durations
//! with units (`30s`, `1m30s`, by `humantime`), and counts that must be positive.

use std::time::Duration;

/// A size in bytes: `256MiB`, `1.5GB`, `64k`, or a plain number of bytes. Above 0.
pub fn size(s: &str) -> Result<u64, String> {
    let bytes = s
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|_| format!("{s:?} is not a size; write it as 256MiB, 1GB, 64k or a number of bytes"))?
        .as_u64();
    if bytes == 0 {
        return Err("a size of 0 means nothing fits; leave the option out to take the peer's default".into());
    }
    Ok(bytes)
}

/// A duration: `30s`, `1m30s`, `500ms`, or a plain number of seconds (`2.5`). Above 0.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s} is not a duration; give a positive one such as 30s or 2m")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration ({e}); write it as 30s, 1m30s, 500ms or a number of seconds"))?,
    };
    if d.is_zero() {
        return Err("a duration of 0 leaves no time to run; give a positive one such as 30s".into());
    }
    Ok(d)
}

/// A size for people: `256 MiB`.
pub fn show_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

/// A duration for people, to the second when it is long: `1h 2m 3s`, `250ms`.
pub fn show_duration(d: Duration) -> String {
    let d = if d >= Duration::from_secs(10) { Duration::from_secs(d.as_secs()) } else { Duration::from_millis(d.as_millis() as u64) };
    humantime::format_duration(d).to_string()
}

/// An instruction budget (`--fuel`): a whole number above 0; `_` may group digits.
pub fn fuel(s: &str) -> Result<u64, String> {
    let digits = s.trim().replace('_', "");
    match digits.parse::<i128>() {
        Ok(n) if n > 0 => u64::try_from(n).map_err(|_| format!("{s} is more fuel than fits in 64 bits (at most {})", u64::MAX)),
        Ok(_) => Err(format!("{s} is not an instruction budget; give a whole number above 0, e.g. 50_000_000_000")),
        Err(_) => Err(format!("{s:?} is not a whole number of instructions, e.g. 50_000_000_000")),
    }
}

/// A quorum (`--quorum`): how many distinct peers must agree on each task, 1 or more.
pub fn quorum(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 => u32::try_from(n).map_err(|_| format!("{s} peers is more than there can be")),
        Ok(_) => Err(format!(
            "a quorum of {s} cannot verify anything: it is how many distinct peers must agree on each task, 1 or more (1 trusts a single peer)"
        )),
        Err(_) => Err(format!("{s:?} is not a number of peers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_refuse_nonsense() {
        assert_eq!(size("256MiB"), Ok(256 << 20));
        assert_eq!(size("64 KiB"), Ok(64 << 10));
        assert_eq!(size("1000"), Ok(1000));
        assert!(size("0").unwrap_err().contains("default"));
        assert!(size("lots").unwrap_err().contains("256MiB"));
        assert_eq!(show_size(256 << 20), "256.0 MiB");
    }

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(duration("0").is_err() && duration("-3").is_err() && duration("soon").is_err());
        assert_eq!(show_duration(Duration::from_millis(83_456)), "1m 23s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn fuel_and_quorum_say_what_is_expected() {
        assert_eq!(fuel("50_000"), Ok(50_000));
        assert!(fuel("-5").unwrap_err().contains("above 0"));
        assert!(fuel("0").is_err());
        assert_eq!(quorum("3"), Ok(3));
        assert!(quorum("0").unwrap_err().contains("1 or more"));
    }
}
