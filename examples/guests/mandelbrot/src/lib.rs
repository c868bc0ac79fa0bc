//! Kernel of the `mandelbrot` example task: render a tile of the Mandelbrot set with smooth
//! colouring, as a greyscale PGM image. A floating-point-heavy kernel whose output is
//! bit-for-bit the same on every machine, natively and in the sandbox.
//!
//! Task format (see `examples/guests/README.md`):
//!
//! - **input**: seven tokens separated (and optionally surrounded) by ASCII white space:
//!   `X0 Y0 X1 Y1 WIDTH HEIGHT MAX_ITER`. The first four are finite decimal numbers (Rust's
//!   `f64` syntax: `-2`, `0.5`, `1e-3`; not `inf` or `nan`) with absolute value at most
//!   [`COORD_LIMIT`]; the last three are unsigned decimal integers (ASCII digits) with
//!   `WIDTH, HEIGHT >= 1`, `WIDTH * HEIGHT <= MAX_PIXELS` and `1 <= MAX_ITER <= 2³² − 1`;
//! - **output**: a binary PGM (P5) image: the header `"P5\n{WIDTH} {HEIGHT}\n255\n"` followed
//!   by `WIDTH * HEIGHT` bytes, one per pixel, row by row from row 0;
//! - **exit code**: 0, or 2 with a message on stderr if the input is malformed.
//!
//! Pixel `(col, row)` samples the point `c = cr + ci·i` at its centre:
//! `cr = X0 + ((X1 − X0) / WIDTH) · (col + 0.5)` and `ci = Y0 + ((Y1 − Y0) / HEIGHT) · (row + 0.5)`,
//! so row 0 lies at `Y0`: give `Y0 > Y1` for the usual picture with the imaginary axis upwards.
//! The iteration is `z ← z² + c` from `z = 0`; a point escapes at step `n` when
//! `|z|² > 256²`. Points that never escape within `MAX_ITER` steps are black (0). An escaped
//! point gets the smooth iteration count `ν = n + 1 − ln(ln|z| / ln 2) / ln 2`, then
//! `t = clamp(ln(1 + ν) / ln(1 + MAX_ITER), 0, 1)` and the grey level
//! `1 + trunc(254 · √t)` (1 to 255).
//!
//! # Determinism
//!
//! Every operation is an IEEE-754 basic operation (`+ − × ÷ √`, correctly rounded on every
//! conforming platform, wasm included), a float/integer conversion, or a bit manipulation.
//! The logarithm is [`ln`] from this crate, built from those operations only, rather than the
//! platform's `libm` (whose last bits differ between glibc, musl and wasi-libc). Rust never
//! fuses `a * b + c` into an FMA on its own. Coordinates are bounded so no intermediate value
//! overflows: the computation is NaN-free. Hence a peer checking a result natively gets the
//! same bytes as the sandbox.
//!
//! This library does no I/O; `src/main.rs` wraps [`task`] as a WASI command.

#![warn(missing_docs)]

/// Largest absolute value accepted for `X0`, `Y0`, `X1`, `Y1`. With the escape radius of 256,
/// it keeps every `|z|²` far below `f64::MAX`, so no step overflows or produces NaN.
pub const COORD_LIMIT: f64 = 1e6;

/// Largest accepted `WIDTH * HEIGHT` (2²⁴ pixels, a 16 MiB image).
pub const MAX_PIXELS: u64 = 1 << 24;

/// The square of the escape radius (256²). A large radius makes the smooth count accurate.
pub const ESCAPE_RADIUS_SQUARED: f64 = 65536.0;

/// What to render: the tile's corners, its size in pixels and the iteration limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Real part at the left edge (column 0 side).
    pub x0: f64,
    /// Imaginary part at the edge of row 0.
    pub y0: f64,
    /// Real part at the right edge.
    pub x1: f64,
    /// Imaginary part at the edge of the last row.
    pub y1: f64,
    /// Image width in pixels (at least 1).
    pub width: u32,
    /// Image height in pixels (at least 1).
    pub height: u32,
    /// Iteration limit (at least 1); points still bounded after it are black.
    pub max_iter: u32,
}

/// Parses the task input `X0 Y0 X1 Y1 WIDTH HEIGHT MAX_ITER` (see the crate documentation for
/// the exact rules). The error is a one-line message for stderr.
pub fn parse(input: &[u8]) -> Result<Params, String> {
    let text = std::str::from_utf8(input).map_err(|_| "the input is not UTF-8 text".to_string())?;
    let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
    if tokens.len() != 7 {
        return Err(format!(
            "expected 7 values `X0 Y0 X1 Y1 WIDTH HEIGHT MAX_ITER`, found {}",
            tokens.len()
        ));
    }
    let coord = |i: usize, name: &str| -> Result<f64, String> {
        let v: f64 = tokens[i]
            .parse()
            .map_err(|_| format!("{name} is not a number: `{}`", clip(tokens[i])))?;
        if !v.is_finite() || v.abs() > COORD_LIMIT {
            return Err(format!(
                "{name} must be a finite number from -1e6 to 1e6 (COORD_LIMIT): `{}`",
                clip(tokens[i])
            ));
        }
        Ok(v)
    };
    let count = |i: usize, name: &str| -> Result<u32, String> {
        let t = tokens[i];
        if !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{name} is not an unsigned decimal integer: `{}`",
                clip(t)
            ));
        }
        let v: u32 = t
            .parse()
            .map_err(|_| format!("{name} does not fit in 32 bits: `{}`", clip(t)))?;
        if v == 0 {
            return Err(format!("{name} must be at least 1"));
        }
        Ok(v)
    };
    let params = Params {
        x0: coord(0, "X0")?,
        y0: coord(1, "Y0")?,
        x1: coord(2, "X1")?,
        y1: coord(3, "Y1")?,
        width: count(4, "WIDTH")?,
        height: count(5, "HEIGHT")?,
        max_iter: count(6, "MAX_ITER")?,
    };
    let pixels = u64::from(params.width) * u64::from(params.height);
    if pixels > MAX_PIXELS {
        return Err(format!(
            "WIDTH * HEIGHT is {pixels}, more than the limit of {MAX_PIXELS}"
        ));
    }
    Ok(params)
}

/// Renders the tile as a binary PGM (P5) image: header `"P5\n{width} {height}\n255\n"`, then
/// one grey byte per pixel, row by row.
///
/// Takes any `Params` (not only parsed ones); a width or height of 0 gives an image with no
/// pixels. Coordinates beyond [`COORD_LIMIT`] are still deterministic but may involve
/// infinities.
pub fn render(params: &Params) -> Vec<u8> {
    let header = format!("P5\n{} {}\n255\n", params.width, params.height);
    let pixels = params.width as usize * params.height as usize;
    let mut out = Vec::with_capacity(header.len() + pixels);
    out.extend_from_slice(header.as_bytes());
    let dx = (params.x1 - params.x0) / f64::from(params.width);
    let dy = (params.y1 - params.y0) / f64::from(params.height);
    let ln_limit = ln(1.0 + f64::from(params.max_iter));
    for row in 0..params.height {
        let ci = params.y0 + dy * (f64::from(row) + 0.5);
        for col in 0..params.width {
            let cr = params.x0 + dx * (f64::from(col) + 0.5);
            out.push(shade(smooth_count(cr, ci, params.max_iter), ln_limit));
        }
    }
    out
}

/// The smooth (fractional) escape count of the point `cr + ci·i`, or `None` if it is still
/// bounded after `max_iter` steps. See the crate documentation for the formula.
pub fn smooth_count(cr: f64, ci: f64, max_iter: u32) -> Option<f64> {
    let (mut zr, mut zi) = (0.0f64, 0.0f64);
    for n in 0..max_iter {
        let zr2 = zr * zr;
        let zi2 = zi * zi;
        let norm2 = zr2 + zi2;
        if norm2 > ESCAPE_RADIUS_SQUARED {
            let ln_modulus = 0.5 * ln(norm2);
            return Some(f64::from(n) + 1.0 - ln(ln_modulus / LN_2) / LN_2);
        }
        zi = 2.0 * zr * zi + ci;
        zr = zr2 - zi2 + cr;
    }
    None
}

/// The grey level of a pixel: 0 inside the set, else `1 + trunc(254 · √t)` with
/// `t = clamp(ln(1 + ν) / ln_limit, 0, 1)`.
fn shade(count: Option<f64>, ln_limit: f64) -> u8 {
    match count {
        None => 0,
        Some(nu) => {
            let t = if nu > 0.0 {
                (ln(1.0 + nu) / ln_limit).min(1.0)
            } else {
                0.0
            };
            1 + (254.0 * t.sqrt()) as u8
        }
    }
}

/// ln 2, correctly rounded.
const LN_2: f64 = std::f64::consts::LN_2;
/// ln 2 split so that `k · LN_2_HI` is exact for |k| < 2¹¹: high 32 bits…
const LN_2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
/// …and the rest (`LN_2_HI + LN_2_LO` is ln 2 to far beyond `f64` precision).
const LN_2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// The natural logarithm, computed only with IEEE-754 basic operations so that it returns
/// the same bits on every platform (unlike `f64::ln`, which calls the platform's `libm`).
/// Accurate to about one unit in the last place.
///
/// Special values: `ln(0) = −∞`, `ln(+∞) = +∞`, NaN for negative numbers and NaN.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x == f64::INFINITY {
        return x;
    }
    let mut bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i32;
    if exponent == 0 {
        // Subnormal: scale by 2⁵⁴ (exact) to normalise.
        bits = (x * f64::from_bits(0x4350_0000_0000_0000)).to_bits();
        exponent = ((bits >> 52) & 0x7ff) as i32 - 54;
    }
    exponent -= 1023;
    // x = m · 2^exponent with m in [1, 2), then moved into (√2/2, √2].
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        exponent += 1;
    }
    // ln m = 2·atanh(s) = 2(s + s³/3 + s⁵/5 + …) with s = (m − 1)/(m + 1), |s| ≤ 0.1716.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // series = 1/3 + s²/5 + … + s²⁰/23 (the terms beyond are below 2⁻⁵⁵ of the result).
    let mut series = 1.0 / 23.0;
    for k in (1..=10).rev() {
        series = series * s2 + 1.0 / f64::from(2 * k + 1);
    }
    let ln_m = 2.0 * s + 2.0 * s * s2 * series;
    let k = f64::from(exponent);
    k * LN_2_HI + (ln_m + k * LN_2_LO)
}

/// Shortens a token quoted in an error message.
fn clip(token: &str) -> String {
    if token.chars().count() <= 40 {
        token.to_string()
    } else {
        format!("{}…", token.chars().take(40).collect::<String>())
    }
}

/// The whole task as a pure function: input bytes to the PGM image, or the message of a
/// malformed input (which the WASI command reports with exit code 2).
pub fn task(input: &[u8]) -> Result<Vec<u8>, String> {
    Ok(render(&parse(input)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a, to pin whole images in a few bytes.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    #[test]
    fn ln_is_accurate() {
        let mut x = 1e-310;
        while x < 1e300 {
            for v in [x, x * 1.1, x * 1.37, x * 1.414, x * 1.415, x * 1.9] {
                let (ours, libm) = (ln(v), v.ln());
                assert!(
                    ulps(ours, libm) <= 2 || (ours - libm).abs() < 1e-15,
                    "ln({v}) = {ours}, libm {libm}"
                );
            }
            x *= 3.7;
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(2.0), LN_2);
        assert!((ln(std::f64::consts::E) - 1.0).abs() < 1e-15);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert_eq!(ln(f64::INFINITY), f64::INFINITY);
        assert!(ln(-1.0).is_nan());
        assert!(ln(f64::NAN).is_nan());
        assert!(ln(f64::from_bits(1)).is_finite());
    }

    #[test]
    fn parses_params() {
        assert_eq!(COORD_LIMIT, 1e6, "the parse error message quotes the limit");
        let p = parse(b"-2 1.5 1 -1.5 64 48 100\n").unwrap();
        assert_eq!(
            p,
            Params {
                x0: -2.0,
                y0: 1.5,
                x1: 1.0,
                y1: -1.5,
                width: 64,
                height: 48,
                max_iter: 100
            }
        );
        assert_eq!(
            parse(b" -0.75e0\t0.1 -0.74 0.11 1 1 4294967295 ")
                .unwrap()
                .max_iter,
            u32::MAX
        );
        for bad in [
            &b""[..],
            b"-2 1.5 1 -1.5 64 48",
            b"-2 1.5 1 -1.5 64 48 100 7",
            b"-2 1.5 1 -1.5 0 48 100",
            b"-2 1.5 1 -1.5 64 0 100",
            b"-2 1.5 1 -1.5 64 48 0",
            b"-2 1.5 1 -1.5 64.0 48 100",
            b"-2 1.5 1 -1.5 -64 48 100",
            b"-2 1.5 1 -1.5 +64 48 100",
            b"nan 1.5 1 -1.5 64 48 100",
            b"-inf 1.5 1 -1.5 64 48 100",
            b"-2 1.5 1e7 -1.5 64 48 100",
            b"-2 1.5 1 -1.5 65536 65536 100",
            b"-2 1.5 1 -1.5 64 48 4294967296",
            b"-2 x 1 -1.5 64 48 100",
            b"\xff",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn image_layout() {
        let p = parse(b"-2 1.5 1 -1.5 30 20 50").unwrap();
        let img = render(&p);
        let header = b"P5\n30 20\n255\n";
        assert_eq!(&img[..header.len()], header);
        assert_eq!(img.len(), header.len() + 600);
        let px = |col: usize, row: usize| img[header.len() + row * 30 + col];
        // The pixel containing c = -0.5 + 0i (column 15, between rows 9 and 10) is inside.
        assert_eq!(px(15, 9), 0);
        assert_eq!(px(15, 10), 0);
        // The corners (|c| > 2) escape at once.
        assert!(px(0, 0) >= 1);
        assert!(px(29, 19) >= 1);
    }

    #[test]
    fn smooth_counts() {
        assert_eq!(smooth_count(0.0, 0.0, 1000), None);
        assert_eq!(smooth_count(-1.0, 0.0, 1000), None);
        let far = smooth_count(100.0, 100.0, 1000).unwrap();
        let near = smooth_count(-0.7436, 0.1318, 1000);
        assert!(far < 3.0, "{far}");
        assert!(near.is_none_or(|v| v > 10.0));
        // Continuity: nearby points have nearby counts.
        let a = smooth_count(0.45, 0.4, 500).unwrap();
        let b = smooth_count(0.45 + 1e-9, 0.4, 500).unwrap();
        assert!((a - b).abs() < 1e-3, "{a} {b}");
    }

    #[test]
    fn output_is_pinned() {
        // These hashes pin the exact bytes: a change to the kernel or a platform difference
        // shows up here. (The sandboxed module must produce the same bytes.)
        let img = task(b"-2 1.5 1 -1.5 96 72 200").unwrap();
        assert_eq!(
            fnv1a(&img),
            fnv1a(&task(b"-2.0 1.5 1.0 -1.5 96 72 200\n").unwrap())
        );
        let pinned = fnv1a(&img);
        let seahorse = fnv1a(&task(b"-0.75 0.11 -0.74 0.1 64 64 1000").unwrap());
        println!("pinned hashes: {pinned:#018x} {seahorse:#018x}");
        assert_eq!(pinned, PINNED_FULL);
        assert_eq!(seahorse, PINNED_SEAHORSE);
    }

    const PINNED_FULL: u64 = 0x58d7_3c00_5f7c_d810;
    const PINNED_SEAHORSE: u64 = 0x1777_7d72_1c6f_7c29;
}
