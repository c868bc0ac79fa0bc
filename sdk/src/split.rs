//! Ways to split work into task inputs: numeric ranges, lines of text, files of a directory.
//!
//! These are the pure (or file-reading) functions behind [`JobBuilder`](crate::JobBuilder)'s
//! `range`, `lines` and `inputs_dir`; they are public so a program can inspect a split before
//! submitting it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Most tasks one job may have: a task's index is a `u32`.
pub const MAX_TASKS: u64 = u32::MAX as u64;

/// Splits `range` into consecutive chunks of `chunk` numbers, the last one shorter if needed.
///
/// Each input is `"A B\n"` in decimal: the chunk's first number and the number one past its last
/// (so the chunk is `A..B`, and the chunks together cover `range` exactly). An empty range gives
/// no inputs.
///
/// What [`JobBuilder::range`](crate::JobBuilder::range) gives:
///
/// ```
/// # let wasm = b"\0asm\x01\0\0\0".to_vec();
/// let job = spare_sdk::Job::builder().module_bytes(wasm).range(0..10, 4).build()?;
/// assert_eq!(job.tasks().collect::<Vec<_>>(), [&b"0 4\n"[..], b"4 8\n", b"8 10\n"]);
/// # Ok::<(), spare_sdk::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidJob`] when `chunk` is 0, when `range.start > range.end`, or when the split
/// would give more than [`MAX_TASKS`] inputs.
pub fn range_inputs(range: Range<u64>, chunk: u64) -> Result<Vec<Vec<u8>>> {
    let Range { start, end } = range;
    if chunk == 0 {
        return Err(Error::InvalidJob(
            "range chunk size must be at least 1".into(),
        ));
    }
    if start > end {
        return Err(Error::InvalidJob(format!(
            "range {start}..{end} is reversed"
        )));
    }
    let count = (end - start).div_ceil(chunk);
    if count > MAX_TASKS {
        return Err(Error::InvalidJob(format!(
            "range {start}..{end} in chunks of {chunk} gives {count} tasks; at most {MAX_TASKS} are allowed"
        )));
    }
    let mut inputs = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut lo = start;
    while lo < end {
        let hi = if end - lo <= chunk { end } else { lo + chunk };
        inputs.push(format!("{lo} {hi}\n").into_bytes());
        lo = hi;
    }
    Ok(inputs)
}

/// One input per non-blank line of `text`: the line followed by `"\n"`.
///
/// Lines end at `"\n"`; a `"\r"` before it is dropped too, so CRLF text gives the same inputs.
/// Lines that are empty or only whitespace are skipped; other lines are kept byte for byte
/// (leading and trailing spaces included). Text need not be UTF-8.
///
/// What [`JobBuilder::lines`](crate::JobBuilder::lines) gives:
///
/// ```
/// # let wasm = b"\0asm\x01\0\0\0".to_vec();
/// let job = spare_sdk::Job::builder().module_bytes(wasm).lines(b"3 5\r\n\n  \n7 9").build()?;
/// assert_eq!(job.tasks().collect::<Vec<_>>(), [&b"3 5\n"[..], b"7 9\n"]);
/// # Ok::<(), spare_sdk::Error>(())
/// ```
pub fn line_inputs(text: &[u8]) -> Vec<Vec<u8>> {
    text.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| {
            let mut input = Vec::with_capacity(line.len() + 1);
            input.extend_from_slice(line);
            input.push(b'\n');
            input
        })
        .collect()
}

/// The regular files directly inside `dir`, sorted by file name (byte order).
///
/// Symbolic links are followed; subdirectories and other non-files are skipped (not descended
/// into). Hidden files are included.
///
/// # Errors
/// [`Error::Io`] naming `dir` or the entry that could not be examined.
pub fn dir_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_file() {
            files.push((entry.file_name(), path));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// Reads a file whole, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(inputs: Vec<Vec<u8>>) -> Vec<String> {
        inputs
            .into_iter()
            .map(|i| String::from_utf8(i).expect("ascii"))
            .collect()
    }

    #[test]
    fn range_exact_multiple() {
        assert_eq!(
            strings(range_inputs(0..9, 3).unwrap()),
            ["0 3\n", "3 6\n", "6 9\n"]
        );
    }

    #[test]
    fn range_last_chunk_shorter() {
        assert_eq!(
            strings(range_inputs(5..12, 5).unwrap()),
            ["5 10\n", "10 12\n"]
        );
    }

    #[test]
    fn range_chunk_larger_than_range() {
        assert_eq!(strings(range_inputs(7..8, 1000).unwrap()), ["7 8\n"]);
    }

    #[test]
    fn range_chunk_of_one() {
        assert_eq!(
            strings(range_inputs(0..3, 1).unwrap()),
            ["0 1\n", "1 2\n", "2 3\n"]
        );
    }

    #[test]
    fn range_empty_gives_nothing() {
        assert!(range_inputs(4..4, 2).unwrap().is_empty());
    }

    #[test]
    fn range_near_u64_max_does_not_overflow() {
        let end = u64::MAX;
        let inputs = strings(range_inputs(end - 5..end, 4).unwrap());
        assert_eq!(
            inputs,
            [
                format!("{} {}\n", end - 5, end - 1),
                format!("{} {end}\n", end - 1)
            ]
        );
    }

    #[test]
    fn range_primes_example_split() {
        let inputs = strings(range_inputs(0..10_000_000, 100_000).unwrap());
        assert_eq!(inputs.len(), 100);
        assert_eq!(inputs[0], "0 100000\n");
        assert_eq!(inputs[99], "9900000 10000000\n");
    }

    #[test]
    fn range_errors() {
        assert!(matches!(range_inputs(0..10, 0), Err(Error::InvalidJob(_))));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = range_inputs(10..0, 1);
        assert!(matches!(reversed, Err(Error::InvalidJob(_))));
        assert!(matches!(
            range_inputs(0..u64::MAX, 1),
            Err(Error::InvalidJob(_))
        ));
    }

    #[test]
    fn lines_skip_blank_and_keep_content() {
        let text = b"a b\n\n \t \r\n  c  \r\nlast";
        assert_eq!(strings(line_inputs(text)), ["a b\n", "  c  \n", "last\n"]);
        assert!(line_inputs(b"").is_empty());
        assert!(line_inputs(b"\n\n\r\n").is_empty());
        assert_eq!(strings(line_inputs(b"x\n")), ["x\n"]);
    }

    #[test]
    fn lines_need_not_be_utf8() {
        assert_eq!(line_inputs(b"\xff\xfe\n"), vec![b"\xff\xfe\n".to_vec()]);
    }

    #[test]
    fn dir_files_sorted_regular_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.in", "a.in", "c10.in", "c2.in", ".hidden"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        std::fs::create_dir(dir.path().join("aa-subdir")).unwrap();
        std::fs::write(dir.path().join("aa-subdir").join("inner"), "x").unwrap();
        let names: Vec<String> = dir_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [".hidden", "a.in", "b.in", "c10.in", "c2.in"]);
    }

    #[test]
    fn dir_files_missing_dir_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        match dir_files(&missing) {
            Err(Error::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io error, got {other:?}"),
        }
    }
}
