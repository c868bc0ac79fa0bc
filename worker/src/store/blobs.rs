//! Blobs as files named by their BLAKE3 hash (`blobs/ab/abcd…`). Uploads stream into a
//! temporary file while hashing, are checked against the expected id and size cap, then renamed
//! into place: a blob file either is complete and matches its name, or does not exist.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use spare_protocol::BlobId;
use tokio::io::AsyncWriteExt;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob with this id here.
    #[error("blob {0} not found")]
    NotFound(BlobId),
    /// The upload passed the size cap.
    #[error("blob is larger than this peer's cap of {max} bytes")]
    TooLarge { max: u64 },
    /// The bytes hash to something other than what the uploader announced.
    #[error("blob hashes to {actual}, not the expected {expected}")]
    HashMismatch { expected: BlobId, actual: BlobId },
    /// The file on disk no longer hashes to its id (a flipped bit, a bad disk); it was removed,
    /// so an upload or a fetch can put the right bytes back.
    #[error("blob {0} was corrupt on disk and has been removed")]
    Corrupt(BlobId),
    /// File system trouble.
    #[error("blob store {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.display().to_string(), source }
}

/// The blob directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// Opens (or creates) the blob directory; leftovers of interrupted uploads are removed.
    pub fn open(dir: &Path) -> Result<BlobStore, BlobError> {
        let tmp = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(BlobStore { dir: dir.to_path_buf() })
    }

    /// Where blob `id` lives.
    pub fn path(&self, id: &BlobId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The size of blob `id`, if present.
    pub async fn size(&self, id: &BlobId) -> Option<u64> {
        tokio::fs::metadata(self.path(id)).await.ok().map(|m| m.len())
    }

    /// Whether blob `id` is present.
    pub async fn has(&self, id: &BlobId) -> bool {
        self.size(id).await.is_some()
    }

    /// The whole blob, checked against its id: corrupt bytes are removed, never used.
    pub async fn read(&self, id: &BlobId) -> Result<Vec<u8>, BlobError> {
        let path = self.path(id);
        match tokio::fs::read(&path).await {
            Ok(b) if BlobId::of(&b) == *id => Ok(b),
            Ok(_) => {
                self.remove_corrupt(id);
                Err(BlobError::Corrupt(*id))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(*id)),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Opens blob `id` for streaming.
    pub async fn open_read(&self, id: &BlobId) -> Result<tokio::fs::File, BlobError> {
        let path = self.path(id);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(*id)),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Starts an upload of at most `max` bytes.
    pub async fn writer(&self, max: u64) -> Result<BlobWriter, BlobError> {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join("tmp").join(format!("{}-{n}", std::process::id()));
        let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(BlobWriter { store: self.clone(), tmp, file: Some(file), hasher: blake3::Hasher::new(), len: 0, max })
    }

    /// Every stored blob with its size and when it was last written, in no order.
    pub fn list(&self) -> Vec<(BlobId, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let Ok(shards) = std::fs::read_dir(&self.dir) else { return out };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
            for f in files.flatten() {
                let name = f.file_name();
                let (Some(id), Ok(md)) = (name.to_str().and_then(|n| n.parse::<BlobId>().ok()), f.metadata()) else { continue };
                out.push((id, md.len(), md.modified().unwrap_or(std::time::UNIX_EPOCH)));
            }
        }
        out
    }

    /// Removes blob `id`, found not to hash to its id, and says so in the log.
    pub fn remove_corrupt(&self, id: &BlobId) {
        tracing::warn!(blob = %id, "a stored blob no longer hashes to its id; removed, to be uploaded or fetched again");
        self.remove(id);
    }

    /// Removes blob `id`; true when it was there.
    pub fn remove(&self, id: &BlobId) -> bool {
        std::fs::remove_file(self.path(id)).is_ok()
    }

    /// Stores `bytes` whole; returns its id and whether it was already present.
    pub async fn put(&self, bytes: &[u8]) -> Result<(BlobId, bool), BlobError> {
        let id = BlobId::of(bytes);
        if self.has(&id).await {
            return Ok((id, true));
        }
        let mut w = self.writer(bytes.len() as u64).await?;
        w.write(bytes).await?;
        let (id, _, existed) = w.finish(None).await?;
        Ok((id, existed))
    }
}

/// An upload in progress. Dropping it without [`BlobWriter::finish`] (an upload that ended
/// early) removes its temporary file; one left by a peer that stopped goes at the next start.
pub struct BlobWriter {
    store: BlobStore,
    tmp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: blake3::Hasher,
    len: u64,
    max: u64,
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After `finish` the file was renamed into place or removed: nothing is there.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl BlobWriter {
    /// Appends a chunk; fails once the total passes the cap.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.len += chunk.len() as u64;
        if self.len > self.max {
            self.abort().await;
            return Err(BlobError::TooLarge { max: self.max });
        }
        self.hasher.update(chunk);
        let Some(f) = self.file.as_mut() else { return Err(BlobError::TooLarge { max: self.max }) };
        f.write_all(chunk).await.map_err(io(&self.tmp))
    }

    /// Checks the hash against `expected`, makes the blob durable and visible, and returns its id,
    /// size and whether it was already present.
    pub async fn finish(mut self, expected: Option<BlobId>) -> Result<(BlobId, u64, bool), BlobError> {
        let actual = BlobId(*self.hasher.finalize().as_bytes());
        if let Some(expected) = expected.filter(|e| *e != actual) {
            self.abort().await;
            return Err(BlobError::HashMismatch { expected, actual });
        }
        let Some(mut f) = self.file.take() else { return Err(BlobError::TooLarge { max: self.max }) };
        f.flush().await.map_err(io(&self.tmp))?;
        f.sync_all().await.map_err(io(&self.tmp))?;
        drop(f);
        let dest = self.store.path(&actual);
        // Already here and intact: keep it. Here but corrupt (`read` removes it): the upload
        // replaces it.
        if tokio::fs::metadata(&dest).await.is_ok() && self.store.read(&actual).await.is_ok() {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Ok((actual, self.len, true));
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
        }
        tokio::fs::rename(&self.tmp, &dest).await.map_err(io(&dest))?;
        // The rename is durable only once its directory is: without this a power loss could
        // leave a job whose module or input blob is gone.
        if let Some(parent) = dest.parent() {
            let dir = tokio::fs::File::open(parent).await.map_err(io(parent))?;
            dir.sync_all().await.map_err(io(parent))?;
        }
        Ok((actual, self.len, false))
    }

    async fn abort(&mut self) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_dedups_checks_hash_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (id, existed) = store.put(b"hello").await.unwrap();
        assert!(!existed);
        assert_eq!(id, BlobId::of(b"hello"));
        assert_eq!(store.put(b"hello").await.unwrap(), (id, true));
        assert_eq!(store.read(&id).await.unwrap(), b"hello");

        let mut w = store.writer(4).await.unwrap();
        assert!(matches!(w.write(b"12345").await, Err(BlobError::TooLarge { max: 4 })));

        let mut w = store.writer(100).await.unwrap();
        w.write(b"abc").await.unwrap();
        let wrong = BlobId::of(b"xyz");
        assert!(matches!(w.finish(Some(wrong)).await, Err(BlobError::HashMismatch { .. })));
        assert!(!store.has(&BlobId::of(b"abc")).await);
        assert!(matches!(store.read(&wrong).await, Err(BlobError::NotFound(_))));
    }

    /// Finding 10: an upload abandoned midway (its stream ended early) leaves no temporary
    /// file, and one left by a stopped peer goes at the next start.
    #[tokio::test]
    async fn an_abandoned_upload_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let tmp_files = || std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        let mut w = store.writer(1 << 20).await.unwrap();
        w.write(&[7u8; 4096]).await.unwrap();
        assert_eq!(tmp_files(), 1, "the upload writes a temporary file");
        drop(w);
        assert_eq!(tmp_files(), 0, "dropped midway, it is removed");
        let (id, _) = store.put(b"kept").await.unwrap();
        assert_eq!(tmp_files(), 0);
        std::fs::write(dir.path().join("tmp").join("left-by-a-crash"), b"x").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(tmp_files(), 0, "stale ones go at start");
        assert!(store.has(&id).await, "finished blobs stay");
    }

    /// Finding 15: a flipped byte on disk is caught when the blob is read (and the file
    /// removed), and uploading the right bytes again puts it back.
    #[tokio::test]
    async fn a_corrupt_blob_is_refused_and_an_upload_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (id, _) = store.put(b"input bytes").await.unwrap();
        std::fs::write(store.path(&id), b"input bytez").unwrap();
        assert!(matches!(store.read(&id).await, Err(BlobError::Corrupt(c)) if c == id));
        assert!(!store.has(&id).await, "the corrupt file is gone");
        std::fs::write(store.path(&id), b"input bytez").unwrap();
        let mut w = store.writer(100).await.unwrap();
        w.write(b"input bytes").await.unwrap();
        assert_eq!(w.finish(Some(id)).await.unwrap(), (id, 11, false), "the upload replaced it");
        assert_eq!(store.read(&id).await.unwrap(), b"input bytes");
    }
}
