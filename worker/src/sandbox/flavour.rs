//! One of the sandbox's engines ([`Metering`], [`Nans`]) with its WASI linker and its disk
//! cache: turns a module into an `InstancePre` of that engine, from the disk cache or by
//! compiling it (in a compiler process when the sandbox has one, see `compiler.rs`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use spare_protocol::BlobId;
use wasmtime::{Engine, InstancePre, Linker, Module};

use super::cache::{DiskCache, Loaded};
use super::compiler::{self, Failed, Target};
use super::engine::{self, Metering, Nans};
use super::error::{ModuleError, SandboxError};
use super::run::StoreData;
use super::{Prepared, SandboxConfig, poll};

/// An engine, the linker of the ABI's imports on it, and where its compiled modules are kept.
pub(crate) struct Flavour {
    pub(crate) metering: Metering,
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreData>,
    nans: Nans,
    disk: Option<DiskCache>,
    /// The executable of the compiler process, and the settings it builds the engine from
    /// (`None`: compile here).
    compiler: Option<(PathBuf, SandboxConfig)>,
}

/// Modules compiled, by where (both counts only grow).
#[derive(Debug, Default)]
pub(crate) struct Compiles {
    pub(crate) apart: AtomicU64,
    pub(crate) here: AtomicU64,
}

impl Flavour {
    pub(crate) fn new(config: &SandboxConfig, metering: Metering, nans: Nans) -> Result<Flavour, SandboxError> {
        let engine = engine::build_engine(config, metering, nans)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |d: &mut StoreData| &mut d.wasi)
            .map_err(|e| SandboxError::Engine(format!("WASI linker: {e:#}")))?;
        poll::add_to_linker(&mut linker).map_err(|e| SandboxError::Engine(format!("poll_oneoff: {e:#}")))?;
        // Each engine's files in their own directory (besides their own engine hash in the
        // name, which also tells the NaN handlings apart): the metered forms, which few jobs
        // need, under `fuel/`.
        let dir = config.cache_dir.as_ref().map(|d| match metering {
            Metering::Deadline | Metering::Unchecked => d.clone(),
            Metering::FuelAndDeadline => d.join("fuel"),
        });
        let disk = match &dir {
            Some(dir) => Some(
                DiskCache::new(dir, engine::engine_hash(&engine, metering, nans))
                    .map_err(|e| SandboxError::CacheDir(format!("{}: {e}", dir.display())))?,
            ),
            None => None,
        };
        // The compiler process hands its work over through the disk cache, so it needs one.
        let compiler = match (&config.compiler, &disk) {
            (Some(exe), Some(_)) => Some((exe.clone(), config.clone())),
            _ => None,
        };
        Ok(Flavour { metering, engine, linker, nans, disk, compiler })
    }

    /// Removes this engine's compiled forms of the modules `ids` from its disk cache; the bytes
    /// freed.
    pub(crate) fn forget(&self, ids: &std::collections::HashSet<BlobId>) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.remove(ids))
    }

    /// The compiled forms in this engine's disk cache.
    pub(crate) fn cached_files(&self) -> Vec<super::cache::CachedFile> {
        self.disk.as_ref().map_or_else(Vec::new, |d| d.files())
    }

    /// The module for this engine: loaded from the disk cache when there, otherwise compiled
    /// now and written there (best effort). `wasm` must be valid (see `validate`), and for a
    /// [`Nans::Rewritten`] engine be `nan::plan`'s output for module `id`.
    pub(crate) fn load_or_compile(
        &self,
        id: &BlobId,
        wasm: &[u8],
        compiles: &Compiles,
    ) -> Result<(InstancePre<StoreData>, Prepared), ModuleError> {
        let (module, how) = match self.disk.as_ref().map(|d| d.load(&self.engine, id)) {
            Some(Loaded::Hit(m)) => (m, Prepared::FromDisk),
            other => {
                if let Some(Loaded::Bad(why)) = other {
                    tracing::warn!(module = %id.short(), %why, "unusable cached module; recompiling");
                }
                match self.compile_apart(id, wasm)? {
                    Some(m) => {
                        compiles.apart.fetch_add(1, Ordering::Relaxed);
                        (m, Prepared::CompiledApart)
                    }
                    None => {
                        let m = self.compile_here(id, wasm)?;
                        compiles.here.fetch_add(1, Ordering::Relaxed);
                        (m, Prepared::Compiled)
                    }
                }
            }
        };
        let pre = self.linker.instantiate_pre(&module).map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        Ok((pre, how))
    }

    /// The module for this engine from the disk cache only (a slot process's load: its peer
    /// compiled it there).
    pub(crate) fn load(&self, id: &BlobId) -> Result<InstancePre<StoreData>, SandboxError> {
        let Some(disk) = &self.disk else { return Err(SandboxError::NotPrepared(*id)) };
        let module = match disk.load(&self.engine, id) {
            Loaded::Hit(m) => m,
            Loaded::Miss => return Err(SandboxError::NotPrepared(*id)),
            Loaded::Bad(why) => return Err(SandboxError::CacheDir(format!("module {}: {why}", id.short()))),
        };
        self.linker.instantiate_pre(&module).map_err(|e| SandboxError::Host(format!("{e:#}")))
    }

    /// Compiles in this process and writes the disk cache (best effort).
    fn compile_here(&self, id: &BlobId, wasm: &[u8]) -> Result<Module, ModuleError> {
        let m = Module::new(&self.engine, wasm).map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        if let Some(disk) = &self.disk
            && let Err(why) = disk.store(id, &m)
        {
            tracing::warn!(module = %id.short(), %why, "cannot write the module cache");
        }
        Ok(m)
    }

    /// Compiles in a compiler process and loads its output from the disk cache; `None` when
    /// there is no compiler process or it failed for the host's reasons. Those say nothing
    /// about the module, so they must not refuse it (a refusal is attested as a result): the
    /// module is compiled here instead, as before compiler processes, with a warning. Only
    /// Cranelift's refusal, the same on every peer, is the module's error.
    fn compile_apart(&self, id: &BlobId, wasm: &[u8]) -> Result<Option<Module>, ModuleError> {
        let (Some((exe, config)), Some(disk)) = (&self.compiler, &self.disk) else { return Ok(None) };
        let target = Target { config, metering: self.metering, nans: self.nans, dir: disk.dir(), engine_hash: disk.engine_hash() };
        let started = std::time::Instant::now();
        let why = match compiler::compile(exe, &target, id, wasm) {
            Ok(pid) => match disk.load(&self.engine, id) {
                Loaded::Hit(m) => {
                    let ms = started.elapsed().as_millis();
                    tracing::info!(module = %id.short(), pid, ms, engine = self.metering.name(), "module compiled in a compiler process");
                    return Ok(Some(m));
                }
                Loaded::Miss => "it wrote no file".to_string(),
                Loaded::Bad(why) => format!("its file is unusable: {why}"),
            },
            Err(Failed::Refused(why)) => return Err(ModuleError::Compile(why)),
            Err(Failed::Host(why)) => {
                // Its compile of this module is the only one (`ModuleCache::with_inflight`).
                disk.remove_partial(id);
                why
            }
        };
        tracing::warn!(module = %id.short(), %why, "the compiler process failed; compiling in the peer");
        Ok(None)
    }
}
