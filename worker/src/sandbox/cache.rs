//! Compiled modules: a bounded in-memory cache of `InstancePre`s (least recently used out
//! first), and an on-disk cache of serialized compiled modules, so that each module is compiled
//! once per peer, not once per process. Each engine ([`Metering`](super::Metering)) has its
//! own compiled form and its own file name, so the two never mix.
//!
//! Disk format: `<cache_dir>/<blob hex>-<engine hash>.cwasm`, holding `Module::serialize()`
//! followed by the 32-byte BLAKE3 of those bytes. Files are written to a temporary name and
//! renamed, so a reader never sees a partial file; the checksum catches anything else (a torn
//! write after a power loss, bit rot), after which the module is recompiled and the file
//! overwritten.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::SystemTime;

use spare_protocol::BlobId;
use wasmtime::{Engine, InstancePre, Module};

use super::engine::Nans;
use super::run::StoreData;

/// A module ready to instantiate.
pub(crate) struct Compiled {
    /// For runs without a fuel budget (most jobs): compiled by `prepare`.
    pub(crate) deadline: InstancePre<StoreData>,
    /// Which deadline engine `deadline` is of (NaNs canonicalised by the rewrite, or by it).
    pub(crate) deadline_nans: Nans,
    /// For runs with a fuel budget: compiled on the first such run.
    pub(crate) fueled: OnceLock<InstancePre<StoreData>>,
    /// The module's bytes, kept until `fueled` is made from them.
    wasm: Mutex<Option<Arc<[u8]>>>,
    /// The most bytes a memory the module defines starts with (`initial_memory_bytes`).
    pub(crate) initial_memory: u64,
    last_used: AtomicU64,
}

impl Compiled {
    /// The module's bytes, while the fuel-metered form is not made yet.
    pub(crate) fn wasm(&self) -> Option<Arc<[u8]>> {
        lock(&self.wasm).clone()
    }

    /// Records the fuel-metered form and lets the bytes go.
    pub(crate) fn set_fueled(&self, pre: InstancePre<StoreData>) -> &InstancePre<StoreData> {
        let pre = self.fueled.get_or_init(|| pre);
        *lock(&self.wasm) = None;
        pre
    }
}

/// Modules prepared in this process.
pub(crate) struct ModuleCache {
    map: RwLock<HashMap<BlobId, Arc<Compiled>>>,
    clock: AtomicU64,
    capacity: usize,
    /// One lock per module being prepared, so concurrent `prepare`s of one module compile once.
    inflight: Mutex<HashMap<BlobId, Arc<Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ModuleCache {
    pub(crate) fn new(capacity: usize) -> ModuleCache {
        ModuleCache {
            map: RwLock::new(HashMap::new()),
            clock: AtomicU64::new(0),
            capacity: capacity.max(1),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The prepared module, marking it used.
    pub(crate) fn get(&self, id: &BlobId) -> Option<Arc<Compiled>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let c = map.get(id)?.clone();
        c.last_used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Some(c)
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.map.read().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    /// Drops a prepared module (runs that hold it finish with it).
    pub(crate) fn remove(&self, id: &BlobId) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Adds a prepared module, evicting the least recently used beyond capacity. Evicted modules
    /// stay alive while runs use them; a later `prepare` reloads them from disk.
    pub(crate) fn insert(
        &self,
        id: BlobId,
        (deadline, deadline_nans): (InstancePre<StoreData>, Nans),
        wasm: &[u8],
        initial_memory: u64,
    ) {
        let used = self.clock.fetch_add(1, Ordering::Relaxed);
        let compiled = Compiled {
            deadline,
            deadline_nans,
            fueled: OnceLock::new(),
            wasm: Mutex::new(Some(Arc::from(wasm))),
            initial_memory,
            last_used: AtomicU64::new(used),
        };
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.insert(id, Arc::new(compiled));
        while map.len() > self.capacity {
            let oldest = map.iter().min_by_key(|(_, c)| c.last_used.load(Ordering::Relaxed)).map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Runs `f` while holding this module's preparation lock.
    pub(crate) fn with_inflight<R>(&self, id: BlobId, f: impl FnOnce() -> R) -> R {
        let slot = lock(&self.inflight).entry(id).or_default().clone();
        let result = {
            let _held = lock(&slot);
            f()
        };
        let mut inflight = lock(&self.inflight);
        // The map's reference and ours: nobody else waits, so the entry can go.
        if Arc::strong_count(&slot) == 2 {
            inflight.remove(&id);
        }
        result
    }
}

/// The on-disk cache of compiled modules for one engine configuration.
pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_hash: String,
    tmp_counter: AtomicU64,
}

/// A compiled form on disk, as trimming sees it.
#[derive(Clone, Debug)]
pub(crate) struct CachedFile {
    pub(crate) path: PathBuf,
    /// The module it is of.
    pub(crate) id: BlobId,
    /// When it was last written or loaded (its modification time).
    pub(crate) used: SystemTime,
    pub(crate) bytes: u64,
}

/// Outcome of a disk lookup.
pub(crate) enum Loaded {
    Hit(Module),
    Miss,
    /// A file was there but unusable (it will be overwritten).
    Bad(String),
}

impl DiskCache {
    pub(crate) fn new(dir: &Path, engine_hash: String) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        Ok(DiskCache { dir: dir.to_path_buf(), engine_hash, tmp_counter: AtomicU64::new(0) })
    }

    /// Removes every compiled form here of the modules `ids`, whatever engine made it (an older
    /// version's too), in one pass over the directory. Returns the bytes freed.
    pub(crate) fn remove(&self, ids: &HashSet<BlobId>) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut freed = 0;
        for e in entries.flatten() {
            // `<blob hex>-<engine hash>.cwasm`
            let name = e.file_name();
            let id = name.to_str().filter(|n| n.ends_with(".cwasm")).and_then(|n| n.split('-').next()?.parse::<BlobId>().ok());
            if !id.is_some_and(|id| ids.contains(&id)) {
                continue;
            }
            let size = e.metadata().map_or(0, |m| m.len());
            if std::fs::remove_file(e.path()).is_ok() {
                freed += size;
            }
        }
        freed
    }

    /// Every compiled form here, whatever engine made it (an older version's are never loaded,
    /// so never marked used).
    pub(crate) fn files(&self) -> Vec<CachedFile> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let id = name.to_str().filter(|n| n.ends_with(".cwasm")).and_then(|n| n.split('-').next()?.parse::<BlobId>().ok());
            let (Some(id), Ok(meta)) = (id, e.metadata()) else { continue };
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(CachedFile { path: e.path(), id, used, bytes: meta.len() });
        }
        out
    }

    /// Where this engine's files are.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine hash in this engine's file names.
    pub(crate) fn engine_hash(&self) -> &str {
        &self.engine_hash
    }

    /// How the temporary files `store` writes for module `id` begin.
    fn partial_prefix(&self, id: &BlobId) -> String {
        format!(".{}-{}.", id.to_hex(), self.engine_hash)
    }

    /// Removes the temporary files of module `id` that a writer killed before its rename left
    /// (a compiler process past its timeout). Only for a module nobody is writing now.
    pub(crate) fn remove_partial(&self, id: &BlobId) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let prefix = self.partial_prefix(id);
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", id.to_hex(), self.engine_hash))
    }

    pub(crate) fn load(&self, engine: &Engine, id: &BlobId) -> Loaded {
        let bytes = match std::fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Miss,
            Err(e) => return Loaded::Bad(format!("read: {e}")),
        };
        let Some(split) = bytes.len().checked_sub(32) else {
            return Loaded::Bad("file too short".into());
        };
        let (body, sum) = bytes.split_at(split);
        if blake3::hash(body).as_bytes().as_slice() != sum {
            return Loaded::Bad("checksum mismatch".into());
        }
        // SAFETY: `Module::deserialize` trusts its input to be wasmtime's own compiled output:
        // it maps it as executable code. These bytes are: the file lives in this peer's own
        // data directory, is written only by `store` below (from `Module::serialize` of a module
        // compiled from bytes whose BLAKE3 is `id`, or their NaN rewrite, by this process or by
        // its compiler process: the same binary, given those bytes by this process, and its
        // engine checked to have this one's hash; see `compiler.rs`), is named by `id` and by the
        // engine compatibility hash (so a module compiled by another wasmtime version or config
        // is never looked up; wasmtime re-checks the version and config in the header anyway),
        // is written under a temporary name and renamed (never seen partially), and its
        // checksum was verified just now (torn or corrupted files are rejected). The bytes are
        // copied into a fresh mapping, so later changes to the file cannot affect the module.
        // Someone able to write into the data directory already controls this peer.
        match unsafe { Module::deserialize(engine, body) } {
            Ok(m) => {
                // Marks it used, for trimming at the disk cap (least recently used first); best
                // effort, as a failure only makes it look older.
                let _ = std::fs::File::options()
                    .write(true)
                    .open(self.path(id))
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Loaded::Hit(m)
            }
            Err(e) => Loaded::Bad(format!("deserialize: {e:#}")),
        }
    }

    /// Writes a compiled module (best effort: a failure only costs a recompile later).
    pub(crate) fn store(&self, id: &BlobId, module: &Module) -> Result<(), String> {
        let mut body = module.serialize().map_err(|e| format!("serialize: {e:#}"))?;
        let sum = *blake3::hash(&body).as_bytes();
        body.extend_from_slice(&sum);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{}{}.{n}.tmp", self.partial_prefix(id), std::process::id()));
        let result = std::fs::write(&tmp, &body).and_then(|()| std::fs::rename(&tmp, self.path(id)));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("write {}: {e}", tmp.display()));
        }
        Ok(())
    }
}
