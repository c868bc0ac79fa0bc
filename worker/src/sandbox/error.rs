//! The sandbox's typed errors: why a module is refused ([`ModuleError`]) and why the host could
//! not run a task at all ([`SandboxError`]). Everything a module *does* is a
//! [`RunReport`](super::RunReport), never an error.

use spare_protocol::BlobId;

/// Why a module cannot be accepted or run. Every variant is decided by the module's bytes and
/// the ABI alone (never by this peer's load or disk), so honest peers refuse the same modules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The module is larger than `max_module_bytes`.
    #[error("module is {size} bytes, above the limit of {max}")]
    TooLarge { size: usize, max: usize },
    /// The bytes are not a valid WebAssembly core module (or use a feature the ABI turns off).
    #[error("not a valid WebAssembly module: {0}")]
    NotWasm(String),
    /// No `_start` export: not a WASI command.
    #[error("the module exports no `_start` function")]
    NoStart,
    /// `_start` is exported but is not a `func() -> ()`.
    #[error("`_start` is not a `func() -> ()`: {0}")]
    BadStart(String),
    /// An import the ABI does not provide: another module name, a function WASI preview 1 does
    /// not have, sockets, or any imported memory, table, global or tag.
    #[error("import `{module}.{name}` is not allowed by the sandbox ABI")]
    ForbiddenImport { module: String, name: String },
    /// An allowed WASI function imported with the wrong signature.
    #[error("import `wasi_snapshot_preview1.{name}` has type {found}, the ABI's is {expected}")]
    ImportSignature { name: String, expected: String, found: String },
    /// The module is valid WebAssembly but needs more than the sandbox gives every module
    /// (tables, instance size…), the same on every peer.
    #[error("module not supported by the sandbox: {0}")]
    Unsupported(String),
    /// Cranelift (or the instance allocator's checks) refused the module.
    #[error("module failed to compile: {0}")]
    Compile(String),
    /// The bytes given to `prepare` do not hash to the id they were given with.
    #[error("module bytes hash to {actual}, not to the id {expected}")]
    WrongId { expected: BlobId, actual: BlobId },
    /// A run asked for a module this sandbox has not prepared.
    #[error("module {0} is not prepared")]
    NotPrepared(BlobId),
}

/// Why the host could not run a task. These are this peer's problems (not attestable results):
/// the caller should retry later, elsewhere, or release the lease.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The engine, its instance pool or its threads could not be set up.
    #[error("sandbox engine: {0}")]
    Engine(String),
    /// The on-disk module cache directory cannot be used.
    #[error("module cache directory: {0}")]
    CacheDir(String),
    /// The module was never prepared here (or was evicted from the memory cache: prepare again).
    #[error("module {0} is not prepared")]
    NotPrepared(BlobId),
    /// The run queue is full: every slot is busy and `queue` runs already wait.
    #[error("sandbox run queue is full")]
    QueueFull,
    /// The sandbox's threads are gone.
    #[error("sandbox is shut down")]
    ShutDown,
    /// More concurrent instances than the pool was sized for (only possible when
    /// `run_blocking` is called from more threads than there are slots).
    #[error("sandbox instance pool exhausted: {0}")]
    Busy(String),
    /// The task asks for more memory than this peer allows (`max_memory_bytes`).
    #[error("task memory limit of {asked} bytes is above this peer's maximum of {max}")]
    LimitTooLarge { asked: u64, max: u64 },
    /// The run waited for a slot past the time it had to start by (its lease would lapse
    /// before its deadline): not started, the caller's to hand back.
    #[error("the run could not start in time: it waited for a slot past its start-by time")]
    Stale,
    /// The host failed in a way that says nothing about the module (a bug): not attestable.
    #[error("sandbox host failure: {0}")]
    Host(String),
    /// A run panicked inside the host (a bug); the pool survived it.
    #[error("sandbox run panicked: {0}")]
    Panicked(String),
}
