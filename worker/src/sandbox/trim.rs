//! Trimming the compiled-module cache at the disk cap: compiled forms are only a saving (a
//! module is compiled again on demand), so when the data directory is over `max_disk` and
//! retention could free no more, the least recently used ones go, oldest first.

use std::collections::HashSet;

use spare_protocol::BlobId;

use super::Sandbox;
use super::cache::CachedFile;

/// What one trim removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Compiled forms removed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// The files to remove to free at least `need` bytes: those of modules not prepared in memory
/// first, then least recently used first (an older engine's files, never loaded, are oldest).
pub(crate) fn choose(mut files: Vec<CachedFile>, need: u64, in_memory: &HashSet<BlobId>) -> Vec<CachedFile> {
    files.sort_by_key(|f| (in_memory.contains(&f.id), f.used, f.path.clone()));
    let mut freed = 0u64;
    files
        .into_iter()
        .take_while(|f| {
            let more = freed < need;
            freed = freed.saturating_add(f.bytes);
            more
        })
        .collect()
}

impl Sandbox {
    /// Removes compiled forms from both engines' disk caches, least recently used first, until
    /// at least `need` bytes are freed (or none are left). Modules prepared in memory keep
    /// running from memory; any module is compiled again when next needed.
    pub fn trim_compiled(&self, need: u64) -> Trimmed {
        let inner = &self.inner;
        let mut files = inner.deadline.cached_files();
        files.extend(inner.fueled.cached_files());
        let in_memory: HashSet<BlobId> = files.iter().map(|f| f.id).filter(|id| inner.cache.contains(id)).collect();
        let mut trimmed = Trimmed::default();
        for f in choose(files, need, &in_memory) {
            if std::fs::remove_file(&f.path).is_ok() {
                trimmed.files += 1;
                trimmed.bytes += f.bytes;
            }
        }
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn file(n: u8, used: u64, bytes: u64) -> CachedFile {
        CachedFile { path: format!("/m/{n}.cwasm").into(), id: BlobId([n; 32]), used: at(used), bytes }
    }

    #[test]
    fn least_recently_used_go_first_until_enough_is_freed() {
        let files = vec![file(1, 30, 100), file(2, 10, 100), file(3, 20, 100), file(4, 5, 100)];
        let ids = |v: Vec<CachedFile>| v.into_iter().map(|f| f.id.0[0]).collect::<Vec<_>>();
        let none = HashSet::new();
        assert_eq!(ids(choose(files.clone(), 0, &none)), Vec::<u8>::new(), "nothing needed, nothing removed");
        assert_eq!(ids(choose(files.clone(), 150, &none)), vec![4, 2], "oldest first, just enough");
        assert_eq!(ids(choose(files.clone(), 10_000, &none)), vec![4, 2, 3, 1], "all when all are needed");
        let prepared: HashSet<BlobId> = [BlobId([4; 32])].into();
        assert_eq!(ids(choose(files, 150, &prepared)), vec![2, 3], "a module prepared in memory goes last");
    }
}
