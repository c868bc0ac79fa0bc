//! Kernel of the `primes` example task: count the primes in a half-open range.
//!
//! Task format (see `examples/guests/README.md`):
//!
//! - **input**: two unsigned decimal integers `LO HI` (ASCII digits only, each fitting in a
//!   `u64`), separated and optionally surrounded by ASCII white space, so a trailing newline is
//!   fine;
//! - **output**: the number of primes `p` with `LO <= p < HI`, in decimal, followed by `"\n"`;
//! - **exit code**: 0, or 2 with a message on stderr if the input is malformed (not exactly two
//!   `u64` integers, or `LO > HI`).
//!
//! The count uses a segmented sieve of Eratosthenes over the odd numbers. Ranges whose square
//! root exceeds [`SIEVE_LIMIT`] (that is, `HI` above about 1.76·10¹³) are sieved with the
//! primes up to [`SIEVE_LIMIT`] and the survivors are confirmed by a deterministic
//! Miller–Rabin test, so any `u64` range is handled correctly, in time proportional to its
//! width. Everything is integer arithmetic: the result is the same on every platform.
//!
//! This library does no I/O; `src/main.rs` wraps [`task`] as a WASI command.

#![warn(missing_docs)]

/// Odd numbers per sieve segment (128 KiB of sieve bytes, friendly to the L2 cache).
pub const SEGMENT: usize = 1 << 17;

/// Largest base prime used to sieve (2²²). Memory for base primes stays below 2 MiB; a range
/// reaching beyond `SIEVE_LIMIT²` has its sieve survivors confirmed with Miller–Rabin.
pub const SIEVE_LIMIT: u64 = 1 << 22;

/// Counts the primes `p` with `lo <= p < hi`. Returns 0 when `hi <= lo`.
///
/// Natively, `count_primes(0, 10_000_000)` (664 579) takes a few milliseconds, and
/// `count_primes(10u64.pow(12), 10u64.pow(12) + 10u64.pow(6))` about as long.
pub fn count_primes(lo: u64, hi: u64) -> u64 {
    if hi <= lo || hi <= 2 {
        return 0;
    }
    let mut count = u64::from(lo <= 2);
    // The odd candidates: every odd n with max(lo, 3) <= n < hi.
    let start = if lo <= 3 { 3 } else { lo | 1 };
    if start >= hi {
        return count;
    }
    let last = hi - 1;
    let root = last.isqrt();
    let bound = root.min(SIEVE_LIMIT);
    let base = odd_primes_up_to(bound);
    // A survivor n of sieving by every prime <= bound is prime when n < (bound + 1)².
    // Beyond that (only when root > SIEVE_LIMIT) it must be checked.
    let proven_below = (bound + 1) * (bound + 1);

    let mut sieve = vec![0u8; SEGMENT];
    let mut seg_lo = start;
    loop {
        let odds_left = (last - seg_lo) / 2 + 1;
        let len = odds_left.min(SEGMENT as u64) as usize;
        let seg = &mut sieve[..len];
        seg.fill(1);
        // Index i stands for seg_lo + 2i.
        for &p in &base {
            let p = u64::from(p);
            // Smallest even offset k with p | seg_lo + k (seg_lo is odd, so seg_lo + k is
            // the first odd multiple of p at or after seg_lo).
            let mut k = (p - seg_lo % p) % p;
            if k % 2 == 1 {
                k += p;
            }
            let square = p * p;
            if square > seg_lo {
                // Multiples below p² have a smaller factor (and p itself is prime).
                k = k.max(square - seg_lo);
            }
            let first = k / 2;
            if first >= len as u64 {
                continue;
            }
            // usize indices (32-bit in wasm) keep the hot loop free of bounds checks.
            let (mut i, step) = (first as usize, p as usize);
            while i < seg.len() {
                seg[i] = 0;
                i += step;
            }
        }
        let seg_hi = seg_lo + 2 * (len as u64 - 1);
        if seg_hi < proven_below {
            count += count_ones(seg);
        } else {
            for (i, &b) in seg.iter().enumerate() {
                if b != 0 {
                    let n = seg_lo + 2 * i as u64;
                    if n < proven_below || is_prime(n) {
                        count += 1;
                    }
                }
            }
        }
        match seg_hi.checked_add(2) {
            Some(next) if next <= last => seg_lo = next,
            _ => break,
        }
    }
    count
}

/// Counts the non-zero bytes of a sieve segment, whose bytes are all 0 or 1: eight at a time
/// with 64-bit arithmetic (fast without SIMD, as in wasm).
fn count_ones(seg: &[u8]) -> u64 {
    let mut chunks = seg.chunks_exact(8);
    let mut total = 0u64;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        // Each byte is 0 or 1, so the top byte of the product is the sum of all eight.
        total += word.wrapping_mul(0x0101_0101_0101_0101) >> 56;
    }
    total
        + chunks
            .remainder()
            .iter()
            .map(|&b| u64::from(b))
            .sum::<u64>()
}

/// The odd primes `3 <= p <= n`, by a plain sieve of Eratosthenes over the odd numbers.
fn odd_primes_up_to(n: u64) -> Vec<u32> {
    if n < 3 {
        return Vec::new();
    }
    assert!(n <= u64::from(u32::MAX), "base primes are u32");
    // Index i stands for 2i + 1.
    let len = n.div_ceil(2) as usize;
    let mut is = vec![true; len];
    is[0] = false;
    let mut i = 1usize;
    loop {
        let p = 2 * i + 1;
        if p * p > n as usize {
            break;
        }
        if is[i] {
            let mut j = (p * p - 1) / 2;
            while j < len {
                is[j] = false;
                j += p;
            }
        }
        i += 1;
    }
    is.iter()
        .enumerate()
        .filter(|&(_, &prime)| prime)
        .map(|(i, _)| (2 * i + 1) as u32)
        .collect()
}

/// Small primes used for trial division and as Miller–Rabin bases; testing these twelve bases
/// is a proof of primality for every `n < 3.3·10²⁴`, which covers all of `u64`.
const SMALL_PRIMES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];

/// Whether `n` is prime: trial division by the primes up to 37, then a deterministic
/// Miller–Rabin test (exact for every `u64`).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in SMALL_PRIMES {
        if n % p == 0 {
            return n == p;
        }
    }
    if n < 41 * 41 {
        return true;
    }
    let mut d = n - 1;
    let s = d.trailing_zeros();
    d >>= s;
    'bases: for a in SMALL_PRIMES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, n: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(n)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, n: u64) -> u64 {
    let mut result = 1u64;
    base %= n;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul_mod(result, base, n);
        }
        base = mul_mod(base, base, n);
        exp >>= 1;
    }
    result
}

/// Parses the task input: exactly two unsigned decimal integers `LO HI` (ASCII digits only),
/// separated and optionally surrounded by ASCII white space, with `LO <= HI`.
///
/// The error is a one-line message for stderr.
pub fn parse_range(input: &[u8]) -> Result<(u64, u64), String> {
    let text = std::str::from_utf8(input).map_err(|_| "the input is not UTF-8 text".to_string())?;
    let mut tokens = text.split_ascii_whitespace();
    let (Some(lo), Some(hi)) = (tokens.next(), tokens.next()) else {
        return Err("expected two integers `LO HI`".into());
    };
    if let Some(extra) = tokens.next() {
        return Err(format!(
            "expected two integers `LO HI`, found more: `{}`",
            clip(extra)
        ));
    }
    let lo = parse_u64(lo, "LO")?;
    let hi = parse_u64(hi, "HI")?;
    if lo > hi {
        return Err(format!("LO ({lo}) is greater than HI ({hi})"));
    }
    Ok((lo, hi))
}

fn parse_u64(token: &str, name: &str) -> Result<u64, String> {
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name} is not an unsigned decimal integer: `{}`",
            clip(token)
        ));
    }
    token
        .parse()
        .map_err(|_| format!("{name} does not fit in 64 bits: `{}`", clip(token)))
}

/// Shortens a token quoted in an error message.
fn clip(token: &str) -> String {
    if token.chars().count() <= 40 {
        token.to_string()
    } else {
        format!("{}…", token.chars().take(40).collect::<String>())
    }
}

/// The whole task as a pure function: input bytes to output bytes (`"{count}\n"`), or the
/// message of a malformed input (which the WASI command reports with exit code 2).
pub fn task(input: &[u8]) -> Result<Vec<u8>, String> {
    let (lo, hi) = parse_range(input)?;
    Ok(format!("{}\n", count_primes(lo, hi)).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(lo: u64, hi: u64) -> u64 {
        (lo..hi).filter(|&n| trial(n)).count() as u64
    }

    fn trial(n: u64) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
    }

    #[test]
    fn pi_of_powers_of_ten() {
        let expected = [0, 4, 25, 168, 1_229, 9_592, 78_498, 664_579];
        for (k, &pi) in expected.iter().enumerate() {
            assert_eq!(count_primes(0, 10u64.pow(k as u32)), pi, "pi(10^{k})");
        }
    }

    #[test]
    fn small_ranges_match_brute_force() {
        for lo in 0..60 {
            for hi in lo..120 {
                assert_eq!(count_primes(lo, hi), brute(lo, hi), "[{lo}, {hi})");
            }
        }
        assert_eq!(count_primes(5, 3), 0);
        assert_eq!(count_primes(2, 3), 1);
        assert_eq!(count_primes(3, 3), 0);
    }

    #[test]
    fn segment_boundaries_add_up() {
        let whole = count_primes(1_000, 1_000 + 5 * SEGMENT as u64 + 77);
        let mut sum = 0;
        let cuts = [
            1_000,
            1_001,
            250_000,
            262_145,
            262_146,
            600_001,
            1_000 + 5 * SEGMENT as u64 + 77,
        ];
        for w in cuts.windows(2) {
            sum += count_primes(w[0], w[1]);
        }
        assert_eq!(sum, whole);
        assert_eq!(whole, brute(1_000, 1_000 + 5 * SEGMENT as u64 + 77));
    }

    #[test]
    fn is_prime_matches_trial_division() {
        for n in 0..20_000 {
            assert_eq!(is_prime(n), trial(n), "{n}");
        }
        // Strong pseudoprimes to several bases.
        for n in [
            2_047u64,
            1_373_653,
            25_326_001,
            3_215_031_751,
            2_152_302_898_747,
            3_474_749_660_383,
            341_550_071_728_321,
            3_825_123_056_546_413_051,
        ] {
            assert!(!is_prime(n), "{n}");
        }
        assert!(is_prime(1_000_000_007));
        assert!(is_prime(u64::MAX - 58)); // 2^64 - 59, the largest 64-bit prime
        assert!(!is_prime(u64::MAX));
    }

    #[test]
    fn large_lo_matches_is_prime() {
        // Sieve only (root below SIEVE_LIMIT).
        let lo = 1_000_000_000_000;
        let expect = (lo..lo + 20_000).filter(|&n| is_prime(n)).count() as u64;
        assert_eq!(count_primes(lo, lo + 20_000), expect);
        // Sieve plus Miller–Rabin (root above SIEVE_LIMIT).
        let lo = 1_000_000_000_000_000;
        let expect = (lo..lo + 20_000).filter(|&n| is_prime(n)).count() as u64;
        assert_eq!(count_primes(lo, lo + 20_000), expect);
    }

    #[test]
    fn top_of_u64() {
        let p = u64::MAX - 58;
        assert_eq!(count_primes(p, u64::MAX), 1);
        assert_eq!(count_primes(p + 1, u64::MAX), 0);
        assert_eq!(count_primes(u64::MAX, u64::MAX), 0);
        let lo = u64::MAX - 3_000;
        let expect = (lo..u64::MAX).filter(|&n| is_prime(n)).count() as u64;
        assert_eq!(count_primes(lo, u64::MAX), expect);
    }

    #[test]
    fn counts_sieve_bytes() {
        for len in 0..40 {
            let seg: Vec<u8> = (0..len).map(|i| u8::from(i % 3 != 1)).collect();
            assert_eq!(
                count_ones(&seg),
                seg.iter().filter(|&&b| b != 0).count() as u64
            );
        }
        assert_eq!(count_ones(&[1; 1000]), 1000);
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range(b"0 100\n"), Ok((0, 100)));
        assert_eq!(parse_range(b"  7\t\r\n9  "), Ok((7, 9)));
        assert_eq!(parse_range(b"5 5"), Ok((5, 5)));
        assert_eq!(parse_range(b"0 18446744073709551615"), Ok((0, u64::MAX)));
        for bad in [
            &b""[..],
            b"5",
            b"1 2 3",
            b"-1 5",
            b"+1 5",
            b"1.0 5",
            b"0x10 20",
            b"9 3",
            b"0 18446744073709551616",
            b"\xff 1",
            b"1,2",
        ] {
            assert!(
                parse_range(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn task_output_format() {
        assert_eq!(task(b"0 100\n").unwrap(), b"25\n");
        assert_eq!(task(b"10 10").unwrap(), b"0\n");
        assert!(task(b"nope").is_err());
    }
}
