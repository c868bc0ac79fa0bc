//! One of the sandbox's engines ([`Metering`], [`Nans`]) with its WASI linker and its disk
//! cache: turns a module into an `InstancePre` of that engine, from the disk cache or by
//! compiling it.

use spare_protocol::BlobId;
use wasmtime::{Engine, InstancePre, Linker, Module};

use super::cache::{DiskCache, Loaded};
use super::engine::{self, Metering, Nans};
use super::error::{ModuleError, SandboxError};
use super::run::StoreData;
use super::{Prepared, SandboxConfig, poll};

/// An engine, the linker of the ABI's imports on it, and where its compiled modules are kept.
pub(crate) struct Flavour {
    pub(crate) metering: Metering,
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreData>,
    disk: Option<DiskCache>,
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
            Metering::Deadline => d.clone(),
            Metering::FuelAndDeadline => d.join("fuel"),
        });
        let disk = match &dir {
            Some(dir) => Some(
                DiskCache::new(dir, engine::engine_hash(&engine, metering, nans))
                    .map_err(|e| SandboxError::CacheDir(format!("{}: {e}", dir.display())))?,
            ),
            None => None,
        };
        Ok(Flavour { metering, engine, linker, disk })
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
    ) -> Result<(InstancePre<StoreData>, Prepared), ModuleError> {
        let (module, how) = match self.disk.as_ref().map(|d| d.load(&self.engine, id)) {
            Some(Loaded::Hit(m)) => (m, Prepared::FromDisk),
            other => {
                if let Some(Loaded::Bad(why)) = other {
                    tracing::warn!(module = %id.short(), %why, "unusable cached module; recompiling");
                }
                let m = Module::new(&self.engine, wasm).map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
                if let Some(disk) = &self.disk
                    && let Err(why) = disk.store(id, &m)
                {
                    tracing::warn!(module = %id.short(), %why, "cannot write the module cache");
                }
                (m, Prepared::Compiled)
            }
        };
        let pre = self.linker.instantiate_pre(&module).map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        Ok((pre, how))
    }
}
