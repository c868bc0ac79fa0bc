//! Deciding which task inputs travel inline in `SubmitRequest` and which are uploaded as blobs.
//!
//! Small inputs go inline (one round trip, nothing stored twice); inputs above
//! [`INLINE_MAX`] are always blobs; and if the inline ones would still push the encoded request
//! over [`REQUEST_BUDGET`], the largest of them become blobs too until it fits. The decision is a
//! pure function of sizes, [`plan_inputs`], computed with protobuf's exact encoding lengths.

use prost::encoding::encoded_len_varint;

use crate::id::ID_HEX_LEN;
use crate::{Error, Result};

/// Largest input sent inline in the submit request: 64 KiB.
pub const INLINE_MAX: usize = 64 * 1024;

/// Largest encoded submit request the SDK sends: 60 MiB, leaving room under the 64 MiB gRPC
/// message limit.
pub const REQUEST_BUDGET: usize = 60 * 1024 * 1024;

/// How one task input travels to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside the submit request (`TaskInput.inline`).
    Inline,
    /// Uploaded with `BlobService.Put` beforehand and named by id (`TaskInput.blob_id`).
    Blob,
}

/// Encoded length of one `TaskInput` entry of `SubmitRequest.tasks` (field tag, length, body).
pub fn task_entry_len(placement: Placement, input_len: usize) -> usize {
    // Body: the oneof field (always encoded, even when empty), tag 1 or 2, one byte each.
    let body = match placement {
        Placement::Inline => 1 + encoded_len_varint(input_len as u64) + input_len,
        Placement::Blob => 1 + encoded_len_varint(ID_HEX_LEN as u64) + ID_HEX_LEN,
    };
    // `tasks` is field 2 of SubmitRequest: a one-byte tag.
    1 + encoded_len_varint(body as u64) + body
}

/// Chooses a placement for each input, given their sizes.
///
/// `base_len` is the encoded length of the submit request without any tasks; `inline_max` and
/// `budget` are normally [`INLINE_MAX`] and [`REQUEST_BUDGET`]. Inputs longer than `inline_max`
/// are blobs. If the request would still exceed `budget`, the largest inline inputs become blobs
/// (ties broken by lower index first) until it fits, so as few inputs as possible are uploaded.
///
/// # Errors
/// [`Error::JobTooLarge`] when even the smallest request (every input that gains from it as a blob)
/// exceeds `budget`.
pub fn plan_inputs(
    sizes: &[usize],
    base_len: usize,
    inline_max: usize,
    budget: usize,
) -> Result<Vec<Placement>> {
    let mut plan: Vec<Placement> = sizes
        .iter()
        .map(|&n| {
            if n > inline_max {
                Placement::Blob
            } else {
                Placement::Inline
            }
        })
        .collect();
    let mut total = base_len
        + sizes
            .iter()
            .zip(&plan)
            .map(|(&n, &p)| task_entry_len(p, n))
            .sum::<usize>();
    if total <= budget {
        return Ok(plan);
    }
    let mut inline: Vec<usize> = (0..sizes.len())
        .filter(|&i| plan[i] == Placement::Inline)
        .collect();
    // Largest first; the sort is stable, so equal sizes keep index order.
    inline.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]));
    for i in inline {
        let saved = task_entry_len(Placement::Inline, sizes[i])
            .saturating_sub(task_entry_len(Placement::Blob, sizes[i]));
        if saved == 0 {
            // Every remaining input is at most this small: uploading them would not help.
            break;
        }
        plan[i] = Placement::Blob;
        total -= saved;
        if total <= budget {
            return Ok(plan);
        }
    }
    Err(Error::JobTooLarge {
        tasks: sizes.len(),
        bytes: total,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use spare_proto::{SubmitRequest, TaskInput, task_input::Source};

    use super::*;
    use Placement::{Blob, Inline};

    const KIB: usize = 1024;

    #[test]
    fn small_inline_large_blob() {
        let sizes = [0, 10, INLINE_MAX, INLINE_MAX + 1, 5 * KIB * KIB];
        let plan = plan_inputs(&sizes, 100, INLINE_MAX, REQUEST_BUDGET).unwrap();
        assert_eq!(plan, [Inline, Inline, Inline, Blob, Blob]);
    }

    #[test]
    fn budget_moves_largest_inline_first() {
        // Four inline-sized inputs; the budget fits only about two of the larger ones.
        let sizes = [10 * KIB, 60 * KIB, 30 * KIB, 60 * KIB];
        let base = 200;
        let budget = base + 75 * KIB;
        let plan = plan_inputs(&sizes, base, INLINE_MAX, budget).unwrap();
        assert_eq!(plan, [Inline, Blob, Inline, Blob]);
        let total = base
            + sizes
                .iter()
                .zip(&plan)
                .map(|(&n, &p)| task_entry_len(p, n))
                .sum::<usize>();
        assert!(total <= budget);
    }

    #[test]
    fn stops_as_soon_as_it_fits() {
        let sizes = [40 * KIB, 50 * KIB, 45 * KIB];
        let budget = 100 * KIB;
        assert_eq!(
            plan_inputs(&sizes, 0, INLINE_MAX, budget).unwrap(),
            [Inline, Blob, Inline]
        );
    }

    #[test]
    fn too_many_tasks_even_as_blobs() {
        let sizes = vec![100; 1000];
        let budget = 1000 * task_entry_len(Blob, 100) - 1;
        match plan_inputs(&sizes, 0, INLINE_MAX, budget) {
            Err(Error::JobTooLarge { tasks, bytes }) => {
                assert_eq!(tasks, 1000);
                assert!(bytes > budget);
            }
            other => panic!("expected JobTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn tiny_inputs_are_never_worth_uploading() {
        // Inline entries of a few bytes are smaller than a blob reference: moving them cannot help.
        let sizes = vec![1; 10];
        let budget = 10 * task_entry_len(Inline, 1) - 1;
        assert!(matches!(
            plan_inputs(&sizes, 0, INLINE_MAX, budget),
            Err(Error::JobTooLarge { .. })
        ));
    }

    #[test]
    fn entry_len_matches_prost_encoding() {
        for n in [0, 1, 127, 128, 16_383, 16_384, INLINE_MAX, 3 * KIB * KIB] {
            for placement in [Inline, Blob] {
                let source = match placement {
                    Inline => Source::Inline(vec![7; n]),
                    Blob => Source::BlobId("a".repeat(ID_HEX_LEN)),
                };
                let with = SubmitRequest {
                    tasks: vec![TaskInput {
                        source: Some(source),
                    }],
                    ..Default::default()
                };
                assert_eq!(
                    with.encoded_len(),
                    task_entry_len(placement, n),
                    "{placement:?} {n}"
                );
            }
        }
    }
}
