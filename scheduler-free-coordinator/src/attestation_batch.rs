//! One signature for a batch of attestations: a peer signs the root of a Merkle tree over the
//! attestations of one report batch, and each attestation carries the signature and its path to
//! the root, so a coordinator, a backup or a dispute can still check any one of them alone,
//! while checking a whole batch costs one signature check (its attestations share the signed
//! message). `Attestation::signature` then holds, instead of 64 bytes:
//!
//! ```text
//! signature (64) ‖ index (u32 LE) ‖ count (u32 LE) ‖ siblings (32 bytes each, leaf to root)
//! ```
//!
//! leaf = BLAKE3(`LEAF` ‖ signing bytes), node = BLAKE3(`NODE` ‖ left ‖ right); a level's odd
//! last node goes up unchanged; the signed message is `BATCH` ‖ count (u32 LE) ‖ root. The count
//! is signed, so a path cannot be replayed into a tree of another shape.

use crate::Attestation;

const LEAF: &[u8] = b"spare.v1.attestation-leaf\0";
const NODE: &[u8] = b"spare.v1.attestation-node\0";
const BATCH: &[u8] = b"spare.v1.attestation-batch\0";
/// Most attestations one batch signature covers (a report batch holds at most 256).
pub const MAX_BATCH: u32 = 4096;
/// Bytes of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// An attestation's path to its batch's root: its siblings, leaf to root.
pub type Path = Vec<[u8; 32]>;

fn leaf(att: &Attestation) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(LEAF);
    h.update(&att.signing_bytes());
    *h.finalize().as_bytes()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(NODE);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The message a batch signature signs.
fn message(count: u32, root: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(BATCH.len() + 4 + 32);
    m.extend_from_slice(BATCH);
    m.extend_from_slice(&count.to_le_bytes());
    m.extend_from_slice(root);
    m
}

/// The message to sign for `atts` as one batch, and each attestation's path to the root (to
/// go after the signature, see [`proof`]). `None` for an empty batch or one over [`MAX_BATCH`].
pub fn batch(atts: &[Attestation]) -> Option<(Vec<u8>, Vec<Path>)> {
    let count = u32::try_from(atts.len()).ok().filter(|n| (1..=MAX_BATCH).contains(n))?;
    let mut level: Vec<[u8; 32]> = atts.iter().map(leaf).collect();
    let mut paths: Vec<Path> = vec![Vec::new(); atts.len()];
    // Where each leaf's ancestor sits in the current level.
    let mut at: Vec<usize> = (0..atts.len()).collect();
    while level.len() > 1 {
        for (i, pos) in at.iter_mut().enumerate() {
            let sibling = *pos ^ 1;
            if sibling < level.len() {
                paths[i].push(level[sibling]);
            }
            *pos /= 2;
        }
        level = level.chunks(2).map(|c| if c.len() == 2 { node(&c[0], &c[1]) } else { c[0] }).collect();
    }
    Some((message(count, &level[0]), paths))
}

/// The signature field of attestation `index` of `count` signed as one batch.
pub fn proof(signature: &[u8; SIGNATURE_BYTES], index: u32, count: u32, path: &[[u8; 32]]) -> Vec<u8> {
    let mut b = Vec::with_capacity(SIGNATURE_BYTES + 8 + 32 * path.len());
    b.extend_from_slice(signature);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    for s in path {
        b.extend_from_slice(s);
    }
    b
}

/// What `att`'s signature signs, and the 64 signature bytes: its signing bytes when signed
/// alone, the batch message its path leads to when signed in a batch. `None` when the field is
/// neither (a malformed path is no signature).
pub fn signed(att: &Attestation) -> Option<(Vec<u8>, &[u8])> {
    let s = &att.signature;
    if s.len() == SIGNATURE_BYTES {
        return Some((att.signing_bytes(), s));
    }
    let (sig, rest) = s.split_at_checked(SIGNATURE_BYTES)?;
    let (index, rest) = rest.split_first_chunk::<4>()?;
    let (count, rest) = rest.split_first_chunk::<4>()?;
    let (index, count) = (u32::from_le_bytes(*index), u32::from_le_bytes(*count));
    if count == 0 || count > MAX_BATCH || index >= count || rest.len() % 32 != 0 {
        return None;
    }
    let mut siblings = rest.chunks_exact(32);
    let (mut hash, mut pos, mut n) = (leaf(att), index as usize, count as usize);
    while n > 1 {
        let sibling = pos ^ 1;
        if sibling < n {
            let s: &[u8; 32] = siblings.next()?.try_into().ok()?;
            hash = if pos % 2 == 0 { node(&hash, s) } else { node(s, &hash) };
        }
        pos /= 2;
        n = n.div_ceil(2);
    }
    if siblings.next().is_some() {
        return None;
    }
    Some((message(count, &hash), sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, JobId, Outcome, PeerId, ResultKey, TaskId};

    fn att(i: u32) -> Attestation {
        Attestation {
            task: TaskId { job: JobId([1; 32]), index: i },
            peer: PeerId([2; 32]),
            result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([3; 32]) },
            fuel_used: 0,
            signature: Vec::new(),
        }
    }

    /// Every member of batches of every size up to 33 leads to the batch's message; a changed
    /// attestation, index, count or sibling, a missing or extra sibling, leads elsewhere or
    /// nowhere.
    #[test]
    fn every_path_leads_to_its_batch_and_no_other() {
        for n in 1..=33u32 {
            let mut atts: Vec<Attestation> = (0..n).map(att).collect();
            let (msg, paths) = batch(&atts).expect("a batch");
            for (i, a) in atts.iter_mut().enumerate() {
                a.signature = proof(&[9; 64], i as u32, n, &paths[i]);
                let (m, sig) = signed(a).expect("a path");
                assert_eq!((m.as_slice(), sig), (msg.as_slice(), &[9u8; 64][..]), "n={n} i={i}");
            }
            let a = atts[(n / 2) as usize].clone();
            let mut other = a.clone();
            other.fuel_used = 1;
            assert_ne!(signed(&other).map(|(m, _)| m), Some(msg.clone()), "n={n}: another attestation");
            let i = n / 2;
            let path = &paths[i as usize];
            if n > 1 {
                let moved = Attestation { signature: proof(&[9; 64], (i + 1) % n, n, path), ..a.clone() };
                assert_ne!(signed(&moved).map(|(m, _)| m), Some(msg.clone()), "n={n}: another index");
                let mut bent = path.clone();
                bent[0][0] ^= 1;
                let bent = Attestation { signature: proof(&[9; 64], i, n, &bent), ..a.clone() };
                assert_ne!(signed(&bent).map(|(m, _)| m), Some(msg.clone()), "n={n}: a changed sibling");
                let short = Attestation { signature: proof(&[9; 64], i, n, &path[1..]), ..a.clone() };
                assert_eq!(signed(&short), None, "n={n}: a missing sibling");
            }
            let long: Vec<[u8; 32]> = path.iter().copied().chain([[0; 32]]).collect();
            assert_eq!(signed(&Attestation { signature: proof(&[9; 64], i, n, &long), ..a.clone() }), None, "n={n}: extra");
            let bigger = Attestation { signature: proof(&[9; 64], i, n + 1, path), ..a.clone() };
            assert_ne!(signed(&bigger).map(|(m, _)| m), Some(msg.clone()), "n={n}: another count");
        }
    }

    #[test]
    fn a_lone_signature_signs_the_attestation_and_malformed_fields_sign_nothing() {
        let mut a = att(0);
        a.signature = vec![5; 64];
        assert_eq!(signed(&a).map(|(m, _)| m), Some(a.signing_bytes()));
        for bad in [vec![], vec![5; 63], vec![5; 71], proof(&[5; 64], 0, 0, &[]), proof(&[5; 64], 2, 2, &[[0; 32]])] {
            assert_eq!(signed(&Attestation { signature: bad.clone(), ..a.clone() }), None, "{}", bad.len());
        }
        assert_eq!(batch(&[]), None);
    }

    /// The bytes are fixed: a batch of three, seeded.
    #[test]
    fn a_batch_message_is_these_bytes() {
        let atts: Vec<Attestation> = (0..3).map(att).collect();
        let (msg, paths) = batch(&atts).expect("a batch");
        assert_eq!(&msg[..BATCH.len()], BATCH);
        assert_eq!(msg[BATCH.len()..BATCH.len() + 4], 3u32.to_le_bytes());
        assert_eq!(paths.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let root = node(&node(&leaf(&atts[0]), &leaf(&atts[1])), &leaf(&atts[2]));
        assert_eq!(msg[BATCH.len() + 4..], root);
    }
}
