//! The peers a client has met over TLS, by address: `known_peers` in the client's config
//! directory, one `ADDR PEERID` a line. A peer is pinned on first use; a later connection to the
//! same address that meets another PeerId is refused, with the file named so a person can
//! remove the line if the peer's identity really changed.

use std::io::Write;
use std::path::PathBuf;

use crate::identity::config_dir;
use crate::{Error, Result};

/// The file's name in the config directory.
pub const KNOWN_PEERS_FILE: &str = "known_peers";
/// Most lines read (a file grown past it keeps its first ones).
const MAX_LINES: usize = 100_000;

/// Where the known peers are kept (`None`: no config directory).
pub fn path() -> Option<PathBuf> {
    config_dir().map(|d| d.join(KNOWN_PEERS_FILE))
}

/// The PeerId pinned for `addr`, if any.
pub fn lookup(addr: &str) -> Option<[u8; 32]> {
    let text = std::fs::read_to_string(path()?).ok()?;
    text.lines().take(MAX_LINES).find_map(|line| {
        let (a, id) = line.trim().split_once(' ')?;
        if a != addr {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(id.trim(), &mut out).ok()?;
        Some(out)
    })
}

/// Pins `id` for `addr` (appends a line; the directory is made, mode 0700, if needed).
pub fn remember(addr: &str, id: &[u8; 32]) -> Result<()> {
    let path = path().ok_or_else(|| Error::Identity("no config directory for known_peers: set XDG_CONFIG_HOME or HOME".into()))?;
    let err = |e: std::io::Error| Error::Identity(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(err)?;
    writeln!(f, "{addr} {}", hex::encode(id)).map_err(err)
}
