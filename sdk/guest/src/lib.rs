//! Helpers for writing Spare tasks in Rust.
//!
//! A Spare task is a WASI preview 1 *command* module (ABI version 1): the task's input arrives
//! on stdin, its output goes to stdout, its exit code is part of the result, and stderr is kept
//! (bounded) for diagnosis only. There is no filesystem and no network; clocks are fixed and
//! random numbers are seeded, so a task must be a deterministic function of its input.
//!
//! This crate is `std`-only and has no dependencies. The usual shape of a task is a pure
//! function from input bytes to output bytes, wrapped by [`run`]:
//!
//! ```no_run
//! use spare_guest::{run, TaskError};
//!
//! fn main() {
//!     run(|input| {
//!         let text = spare_guest::utf8(input)?;
//!         let n: u64 = text
//!             .trim()
//!             .parse()
//!             .map_err(|e| TaskError::invalid_input(format!("not a number: {e}")))?;
//!         Ok(format!("{}\n", n * 2).into_bytes())
//!     })
//! }
//! ```
//!
//! # Exit codes
//!
//! WASI preview 1 runtimes (wasmtime among them) only accept exit statuses in `0..=125`; a
//! module that exits with anything else traps instead of exiting. The helpers here therefore
//! replace a code outside that range by [`EXIT_MAX`] (125), on every platform, so a task
//! behaves the same natively and in the sandbox. By convention [`EXIT_INVALID_INPUT`] (2)
//! means the input was malformed and [`EXIT_IO_ERROR`] (74) means stdin or stdout failed.

#![warn(missing_docs)]

use std::fmt;
use std::io::{self, Read, Write};

/// Exit code for malformed input (the task could not understand what it was given).
pub const EXIT_INVALID_INPUT: i32 = 2;

/// Exit code for a failure to read stdin or write stdout (for example an output cap reached).
/// The value is `EX_IOERR` from BSD's `sysexits.h`.
pub const EXIT_IO_ERROR: i32 = 74;

/// The largest exit code a WASI preview 1 command may use; larger or negative codes are
/// replaced by this one.
pub const EXIT_MAX: i32 = 125;

/// A task's failure: the exit code it ends with and a message for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The exit code, in `1..=125` by convention (see [`clamp_exit_code`] for what happens
    /// outside `0..=125`). Code 0 is allowed but means success to anyone reading the result.
    pub code: i32,
    /// A human-readable explanation, written to stderr (which is not verified).
    pub message: String,
}

impl TaskError {
    /// A failure with the given exit code and message.
    pub fn new(code: i32, message: impl fmt::Display) -> Self {
        TaskError {
            code,
            message: message.to_string(),
        }
    }

    /// A malformed-input failure: exit code [`EXIT_INVALID_INPUT`] (2).
    pub fn invalid_input(message: impl fmt::Display) -> Self {
        TaskError::new(EXIT_INVALID_INPUT, message)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (exit code {})", self.message, self.code)
    }
}

impl std::error::Error for TaskError {}

/// Maps an exit code into the range WASI preview 1 accepts: codes in `0..=125` are kept,
/// anything else (negative or above 125) becomes [`EXIT_MAX`].
pub fn clamp_exit_code(code: i32) -> i32 {
    if (0..=EXIT_MAX).contains(&code) {
        code
    } else {
        EXIT_MAX
    }
}

/// Reads all of stdin (the task's input) and returns it.
///
/// If stdin cannot be read, the task [`fail`]s with [`EXIT_IO_ERROR`].
pub fn read_input() -> Vec<u8> {
    match read_all(io::stdin().lock()) {
        Ok(bytes) => bytes,
        Err(e) => fail(
            EXIT_IO_ERROR,
            format_args!("cannot read the input from stdin: {e}"),
        ),
    }
}

/// Reads all of stdin as UTF-8 text.
///
/// If the input is not valid UTF-8, the task [`fail`]s with [`EXIT_INVALID_INPUT`] (2) and a
/// message naming the first invalid byte offset.
pub fn read_input_string() -> String {
    match into_string(read_input()) {
        Ok(text) => text,
        Err(e) => fail(e.code, e.message),
    }
}

/// Borrows the input as UTF-8 text, or returns an [`EXIT_INVALID_INPUT`] error; handy inside
/// the closure given to [`run`] (`let text = spare_guest::utf8(input)?;`).
pub fn utf8(input: &[u8]) -> Result<&str, TaskError> {
    std::str::from_utf8(input).map_err(|e| utf8_error(&e))
}

/// Writes `bytes` to stdout (the task's output) and flushes it.
///
/// May be called several times; the output is the concatenation. If stdout cannot be written
/// (for instance because the sandbox's output cap was reached), the task [`fail`]s with
/// [`EXIT_IO_ERROR`].
pub fn write_output(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        drop(out);
        fail(
            EXIT_IO_ERROR,
            format_args!("cannot write the output to stdout: {e}"),
        );
    }
}

/// Ends the task: writes `msg` and a newline to stderr, then exits with `code` (clamped by
/// [`clamp_exit_code`]). Never returns.
///
/// Anything already passed to [`write_output`] stays part of the output.
pub fn fail(code: i32, msg: impl fmt::Display) -> ! {
    // stderr is unbuffered; a failure to write it must not hide the exit code.
    let _ = writeln!(io::stderr().lock(), "{msg}");
    std::process::exit(clamp_exit_code(code))
}

/// Runs a whole task: reads all of stdin, calls `f` with it, then
///
/// - on `Ok(output)`: writes `output` to stdout, flushes it and exits with code 0;
/// - on `Err(TaskError { code, message })`: writes `message` to stderr and exits with `code`
///   (clamped by [`clamp_exit_code`]), writing nothing to stdout.
///
/// Never returns, so it can be the last expression of `main`.
pub fn run<F>(f: F) -> !
where
    F: FnOnce(&[u8]) -> Result<Vec<u8>, TaskError>,
{
    let input = read_input();
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr().lock();
    let code = execute(&input, f, &mut stdout, &mut stderr);
    drop(stdout);
    drop(stderr);
    std::process::exit(code)
}

/// The testable core of [`run`]: applies `f` to `input`, writes to `out`/`err`, returns the
/// exit code.
fn execute<F, O, E>(input: &[u8], f: F, out: &mut O, err: &mut E) -> i32
where
    F: FnOnce(&[u8]) -> Result<Vec<u8>, TaskError>,
    O: Write,
    E: Write,
{
    match f(input) {
        Ok(output) => match out.write_all(&output).and_then(|()| out.flush()) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(err, "cannot write the output to stdout: {e}");
                EXIT_IO_ERROR
            }
        },
        Err(TaskError { code, message }) => {
            let _ = writeln!(err, "{message}");
            clamp_exit_code(code)
        }
    }
}

fn read_all(mut reader: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn into_string(bytes: Vec<u8>) -> Result<String, TaskError> {
    String::from_utf8(bytes).map_err(|e| utf8_error(&e.utf8_error()))
}

fn utf8_error(e: &std::str::Utf8Error) -> TaskError {
    TaskError::invalid_input(format_args!(
        "the input is not valid UTF-8 (first invalid byte at offset {})",
        e.valid_up_to()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(
        input: &[u8],
        f: impl FnOnce(&[u8]) -> Result<Vec<u8>, TaskError>,
    ) -> (i32, Vec<u8>, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = execute(input, f, &mut out, &mut err);
        (code, out, String::from_utf8(err).unwrap())
    }

    #[test]
    fn ok_writes_output_and_exits_zero() {
        let (code, out, err) = exec(b"abc", |i| Ok(i.iter().rev().copied().collect()));
        assert_eq!(code, 0);
        assert_eq!(out, b"cba");
        assert_eq!(err, "");
    }

    #[test]
    fn error_writes_message_and_code_only() {
        let (code, out, err) = exec(b"x", |_| Err(TaskError::new(7, "bad thing")));
        assert_eq!(code, 7);
        assert!(out.is_empty());
        assert_eq!(err, "bad thing\n");
    }

    #[test]
    fn invalid_input_is_code_two() {
        let e = TaskError::invalid_input("nope");
        assert_eq!(e.code, EXIT_INVALID_INPUT);
        assert_eq!(e.code, 2);
        assert_eq!(e.message, "nope");
        assert_eq!(e.to_string(), "nope (exit code 2)");
    }

    #[test]
    fn exit_codes_are_clamped_to_the_wasi_range() {
        assert_eq!(clamp_exit_code(0), 0);
        assert_eq!(clamp_exit_code(1), 1);
        assert_eq!(clamp_exit_code(125), 125);
        assert_eq!(clamp_exit_code(126), EXIT_MAX);
        assert_eq!(clamp_exit_code(255), EXIT_MAX);
        assert_eq!(clamp_exit_code(-1), EXIT_MAX);
        assert_eq!(clamp_exit_code(i32::MIN), EXIT_MAX);
        let (code, _, _) = exec(b"", |_| Err(TaskError::new(300, "x")));
        assert_eq!(code, EXIT_MAX);
    }

    #[test]
    fn failed_output_write_is_an_io_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("cap reached"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut err = Vec::new();
        let code = execute(b"", |_| Ok(b"data".to_vec()), &mut Broken, &mut err);
        assert_eq!(code, EXIT_IO_ERROR);
        assert!(String::from_utf8(err).unwrap().contains("cap reached"));
    }

    #[test]
    fn utf8_helpers() {
        assert_eq!(utf8(b"hello").unwrap(), "hello");
        let e = utf8(b"ab\xffc").unwrap_err();
        assert_eq!(e.code, EXIT_INVALID_INPUT);
        assert!(e.message.contains("offset 2"), "{}", e.message);
        assert_eq!(into_string(b"ok".to_vec()).unwrap(), "ok");
        assert_eq!(into_string(vec![0xc3]).unwrap_err().code, 2);
    }

    #[test]
    fn read_all_reads_everything() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        assert_eq!(read_all(&data[..]).unwrap(), data);
        assert!(read_all(&b""[..]).unwrap().is_empty());
    }
}
