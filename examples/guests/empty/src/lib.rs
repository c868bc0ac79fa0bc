//! Kernel of the `empty` example task, which does nothing at all.
//!
//! Task format: the input is ignored (the command does not even read stdin), the output is
//! empty, and the exit code is 0. The task measures Spare's per-task overhead: whatever time
//! it takes in the sandbox is the cost of instantiating and running a module, not of work.
//!
//! The library exists so that every example has the same shape for the host's benchmarks and
//! checks.

#![warn(missing_docs)]

/// The whole task as a pure function: ignores `input` and returns an empty output. Never
/// fails.
pub fn task(input: &[u8]) -> Result<Vec<u8>, String> {
    let _ = input;
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_is_empty() {
        assert_eq!(super::task(b"anything"), Ok(Vec::new()));
        assert_eq!(super::task(b""), Ok(Vec::new()));
    }
}
