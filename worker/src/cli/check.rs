//! Checks `spare submit` makes before uploading anything: the module is one the sandbox runs
//! (the same validation every peer makes, so an error names the file rather than a hash), and the
//! memory limit leaves room for the memory the module starts with.

use std::path::Path;

use anyhow::Context;

use crate::sandbox::{Sandbox, SandboxConfig, initial_memory_bytes};

/// Reads the module at `path` and validates it as a peer would; `memory` is the task limit
/// asked for, if any.
pub fn module(path: &Path, memory: Option<u64>) -> anyhow::Result<Vec<u8>> {
    let wasm = std::fs::read(path).with_context(|| format!("cannot read the module {}", path.display()))?;
    // One slot, no disk cache: validation never compiles, and nothing runs.
    let sandbox = Sandbox::new(SandboxConfig { slots: 1, queue: 1, ..Default::default() })
        .map_err(|e| anyhow::anyhow!("cannot check {}: {e}", path.display()))?;
    sandbox.validate(&wasm).map_err(|e| {
        anyhow::anyhow!("{} is not a module a peer can run: {e} (a task is a WASI preview 1 command built for wasm32-wasip1; see docs/guest-abi.md)", path.display())
    })?;
    let initial = initial_memory_bytes(&wasm);
    if let Some(limit) = memory
        && limit < initial
    {
        anyhow::bail!(
            "--memory {} is below the {} of memory {} starts with, so every task would fail; give at least --memory {}MiB",
            super::units::show_size(limit),
            super::units::show_size(initial),
            path.display(),
            initial.div_ceil(1 << 20),
        );
    }
    Ok(wasm)
}
