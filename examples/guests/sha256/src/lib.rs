//! Kernel of the `sha256` example task: iterate SHA-256 over a seed. An integer kernel
//! (32-bit rotations, additions and logic), with SHA-256 written out here from FIPS 180-4,
//! without crates.
//!
//! Task format (see `examples/guests/README.md`):
//!
//! - **input**: a first line holding the round count `N` as an unsigned decimal integer
//!   (ASCII digits only, fitting in a `u64`, no spaces or `\r`), then `"\n"`, then the seed:
//!   every remaining byte, verbatim (a trailing newline is part of the seed). An input with no
//!   `"\n"` at all is just `N`, and the seed is empty;
//! - **output**: `h_N` as 64 lowercase hexadecimal digits followed by `"\n"`, where
//!   `h_0 = SHA-256(seed)` and `h_{i+1} = SHA-256(h_i)` (hashing the 32 raw bytes of `h_i`);
//! - **exit code**: 0, or 2 with a message on stderr if the first line is not a `u64`.
//!
//! So `"0\nabc"` gives SHA-256("abc") and `"1\nabc"` gives SHA-256(SHA-256("abc")).
//!
//! This library does no I/O; `src/main.rs` wraps [`task`] as a WASI command.

#![warn(missing_docs)]

/// The initial hash value H⁽⁰⁾ (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The round constants K (FIPS 180-4, 4.2.2).
const K: [u32; 64] = [
    0x428a_2f98,
    0x7137_4491,
    0xb5c0_fbcf,
    0xe9b5_dba5,
    0x3956_c25b,
    0x59f1_11f1,
    0x923f_82a4,
    0xab1c_5ed5,
    0xd807_aa98,
    0x1283_5b01,
    0x2431_85be,
    0x550c_7dc3,
    0x72be_5d74,
    0x80de_b1fe,
    0x9bdc_06a7,
    0xc19b_f174,
    0xe49b_69c1,
    0xefbe_4786,
    0x0fc1_9dc6,
    0x240c_a1cc,
    0x2de9_2c6f,
    0x4a74_84aa,
    0x5cb0_a9dc,
    0x76f9_88da,
    0x983e_5152,
    0xa831_c66d,
    0xb003_27c8,
    0xbf59_7fc7,
    0xc6e0_0bf3,
    0xd5a7_9147,
    0x06ca_6351,
    0x1429_2967,
    0x27b7_0a85,
    0x2e1b_2138,
    0x4d2c_6dfc,
    0x5338_0d13,
    0x650a_7354,
    0x766a_0abb,
    0x81c2_c92e,
    0x9272_2c85,
    0xa2bf_e8a1,
    0xa81a_664b,
    0xc24b_8b70,
    0xc76c_51a3,
    0xd192_e819,
    0xd699_0624,
    0xf40e_3585,
    0x106a_a070,
    0x19a4_c116,
    0x1e37_6c08,
    0x2748_774c,
    0x34b0_bcb5,
    0x391c_0cb3,
    0x4ed8_aa4a,
    0x5b9c_ca4f,
    0x682e_6ff3,
    0x748f_82ee,
    0x78a5_636f,
    0x84c8_7814,
    0x8cc7_0208,
    0x90be_fffa,
    0xa450_6ceb,
    0xbef9_a3f7,
    0xc671_78f2,
];

/// The SHA-256 compression function: absorbs one 64-byte block into `state`.
fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut w = [0u32; 64];
    for (i, word) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for t in 16..64 {
        let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
        let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16]
            .wrapping_add(s0)
            .wrapping_add(w[t - 7])
            .wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for t in 0..64 {
        let big_s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(big_s1)
            .wrapping_add(ch)
            .wrapping_add(K[t])
            .wrapping_add(w[t]);
        let big_s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = big_s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

fn digest_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// The SHA-256 digest of `data` (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut state = H0;
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        compress(&mut state, block.try_into().expect("64-byte chunk"));
    }
    // Padding: 0x80, zeros, then the message length in bits as a big-endian u64, filling one
    // block if the remainder leaves room for 9 more bytes, else two.
    let rest = blocks.remainder();
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let tail_len = if rest.len() < 56 { 64 } else { 128 };
    let bit_len = (data.len() as u64).wrapping_mul(8);
    tail[tail_len - 8..tail_len].copy_from_slice(&bit_len.to_be_bytes());
    for block in tail[..tail_len].chunks_exact(64) {
        compress(&mut state, block.try_into().expect("64-byte chunk"));
    }
    digest_bytes(&state)
}

/// SHA-256 of a 32-byte message, with its single padded block built in place.
fn sha256_of_digest(digest: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(digest);
    block[32] = 0x80;
    block[62] = 0x01; // length: 256 bits = 0x0100
    let mut state = H0;
    compress(&mut state, &block);
    digest_bytes(&state)
}

/// The hash chain `h_rounds`, where `h_0 = sha256(seed)` and `h_{i+1} = sha256(h_i)`.
///
/// `chain(seed, 0)` is `sha256(seed)`. Each round is one compression (natively, roughly a
/// few million rounds per second).
pub fn chain(seed: &[u8], rounds: u64) -> [u8; 32] {
    let mut h = sha256(seed);
    for _ in 0..rounds {
        h = sha256_of_digest(&h);
    }
    h
}

/// Lowercase hexadecimal of a digest (64 characters).
pub fn to_hex(digest: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for &b in digest {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Parses the task input into the round count `N` and the seed (a slice of `input`): see the
/// crate documentation. The error is a one-line message for stderr.
pub fn parse(input: &[u8]) -> Result<(u64, &[u8]), String> {
    let (first, seed) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &input[input.len()..]),
    };
    if first.is_empty() {
        return Err("the first line must be the round count N, and it is empty".into());
    }
    if !first.iter().all(u8::is_ascii_digit) {
        let shown: String = String::from_utf8_lossy(first).chars().take(40).collect();
        return Err(format!(
            "the first line must be the round count N (decimal digits only): `{shown}`"
        ));
    }
    let rounds = std::str::from_utf8(first)
        .expect("ASCII digits")
        .parse()
        .map_err(|_| "the round count N does not fit in 64 bits".to_string())?;
    Ok((rounds, seed))
}

/// The whole task as a pure function: input bytes to `"{hex of h_N}\n"`, or the message of a
/// malformed input (which the WASI command reports with exit code 2).
pub fn task(input: &[u8]) -> Result<Vec<u8>, String> {
    let (rounds, seed) = parse(input)?;
    let mut out = to_hex(&chain(seed, rounds)).into_bytes();
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(data: &[u8]) -> String {
        to_hex(&sha256(data))
    }

    #[test]
    fn fips_180_vectors() {
        assert_eq!(
            hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"
        );
        assert_eq!(
            hex(&vec![b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn padding_boundaries() {
        let expected = [
            (
                55,
                "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59",
            ),
            (
                56,
                "da2ae4d6b36748f2a318f23e7ab1dfdf45acdc9d049bd80e59de82a60895f562",
            ),
            (
                63,
                "29af2686fd53374a36b0846694cc342177e428d1647515f078784d69cdb9e488",
            ),
            (
                64,
                "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108",
            ),
            (
                65,
                "4bfd2c8b6f1eec7a2afeb48b934ee4b2694182027e6d0fc075074f2fabb31781",
            ),
            (
                119,
                "da18797ed7c3a777f0847f429724a2d8cd5138e6ed2895c3fa1a6d39d18f7ec6",
            ),
            (
                120,
                "f52b23db1fbb6ded89ef42a23ce0c8922c45f25c50b568a93bf1c075420bbb7c",
            ),
        ];
        for (len, digest) in expected {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(hex(&data), digest, "length {len}");
        }
    }

    #[test]
    fn chains() {
        assert_eq!(chain(b"abc", 0), sha256(b"abc"));
        assert_eq!(chain(b"abc", 1), sha256(&sha256(b"abc")));
        assert_eq!(chain(b"abc", 3), sha256(&sha256(&sha256(&sha256(b"abc")))));
        let digest = sha256(b"x");
        assert_eq!(sha256_of_digest(&digest), sha256(&digest));
        assert_eq!(
            to_hex(&chain(b"spare\n", 1000)),
            "d5a7e5d7854bb16e617b4b504afc266d9b5b59118ab7b6a272251eafbbe981c9"
        );
    }

    #[test]
    fn parses_input() {
        assert_eq!(parse(b"5\nseed"), Ok((5, &b"seed"[..])));
        assert_eq!(parse(b"5\nseed\n"), Ok((5, &b"seed\n"[..])));
        assert_eq!(parse(b"0\n"), Ok((0, &b""[..])));
        assert_eq!(parse(b"7"), Ok((7, &b""[..])));
        assert_eq!(
            parse(b"18446744073709551615\n\xff\x00"),
            Ok((u64::MAX, &b"\xff\x00"[..]))
        );
        for bad in [
            &b""[..],
            b"\nseed",
            b" 5\nseed",
            b"5 \nseed",
            b"5\r\nseed",
            b"-1\n",
            b"0x10\n",
            b"18446744073709551616\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn task_output_format() {
        assert_eq!(
            task(b"0\nabc").unwrap(),
            b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        );
        assert_eq!(
            task(b"0").unwrap(),
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        );
        assert_eq!(
            task(b"1000\nspare\n").unwrap(),
            b"d5a7e5d7854bb16e617b4b504afc266d9b5b59118ab7b6a272251eafbbe981c9\n"
        );
        assert!(task(b"abc\n").is_err());
    }
}
