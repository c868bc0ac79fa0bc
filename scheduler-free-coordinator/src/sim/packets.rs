//! The bytes of the gossip packets in flight, kept per bucket of the event queue in 64 KiB
//! chunks, not one allocation each. The join wave of 10,000 peers has most of a million packets
//! in flight at once; as separate allocations, freed long after the records allocated beside
//! them, they left the allocator's pages fragmented for the rest of the run (the resident peak
//! at its end was 1.09 GB, of which 0.63 GB live). In chunks they go together when their bucket
//! is passed, and no chunk is ever copied to grow.

/// A chunk's room; a packet larger than it gets a chunk of its own.
const CHUNK: usize = 64 * 1024;
/// Emptied chunks kept for buckets to come (4 MiB).
const SPARE_CHUNKS: usize = 64;
/// A packet's header: sender, receiver, cell and length, u32 LE each.
const HEADER: usize = 16;

/// Packet bytes per bucket.
pub struct Packets {
    buckets: Vec<Vec<Vec<u8>>>,
    spare: Vec<Vec<u8>>,
}

/// Where a packet is in its bucket: chunk number in the high 16 bits, offset in the low 16.
pub type Handle = u32;

impl Packets {
    /// Room for `buckets` buckets, all empty.
    pub fn new(buckets: usize) -> Packets {
        Packets { buckets: (0..buckets).map(|_| Vec::new()).collect(), spare: Vec::new() }
    }

    /// Appends a packet to `bucket`.
    pub fn append(&mut self, bucket: usize, from: u32, to: u32, cell: u32, data: &[u8]) -> Handle {
        let need = HEADER + data.len();
        let chunks = &mut self.buckets[bucket];
        let fits = chunks.last().is_some_and(|c| c.len() + need <= c.capacity());
        if !fits {
            let chunk = if need <= CHUNK { self.spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK)) } else { Vec::with_capacity(need) };
            chunks.push(chunk);
        }
        let number = chunks.len() - 1;
        let chunk = &mut chunks[number];
        let offset = chunk.len();
        for x in [from, to, cell, data.len() as u32] {
            chunk.extend_from_slice(&x.to_le_bytes());
        }
        chunk.extend_from_slice(data);
        // A 64 KiB chunk's offsets fit in 16 bits; a packet of its own chunk is at 0.
        debug_assert!(number < 1 << 16 && offset < 1 << 16);
        ((number as u32) << 16) | offset as u32
    }

    /// Copies the packet at `handle` of `bucket` into `into` (its bytes replaced), returning
    /// (sender, receiver, cell).
    pub fn read(&self, bucket: usize, handle: Handle, into: &mut Vec<u8>) -> (u32, u32, u32) {
        let chunk = self.buckets[bucket].get((handle >> 16) as usize).map_or(&[][..], Vec::as_slice);
        let at = (handle & 0xffff) as usize;
        let word = |i: usize| chunk.get(at + 4 * i..at + 4 * i + 4).map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        let len = word(3) as usize;
        into.clear();
        into.extend_from_slice(chunk.get(at + HEADER..at + HEADER + len).unwrap_or_default());
        (word(0), word(1), word(2))
    }

    /// Lets go of `bucket`'s packets, all handled.
    pub fn clear(&mut self, bucket: usize) {
        for mut chunk in self.buckets[bucket].drain(..) {
            if chunk.capacity() == CHUNK && self.spare.len() < SPARE_CHUNKS {
                chunk.clear();
                self.spare.push(chunk);
            }
        }
        if self.buckets[bucket].capacity() > 4 {
            self.buckets[bucket] = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_come_back_as_appended_across_chunks_and_alone_when_large() {
        let mut p = Packets::new(2);
        let small: Vec<u8> = (0..2_000u32).map(|i| i as u8).collect();
        let large = vec![7u8; CHUNK + 5];
        let mut handles = Vec::new();
        // 100 small packets (0 to 1,980 bytes, 100 KB in all) take two chunks; the large one
        // one of its own.
        for i in 0..100u32 {
            handles.push((i, p.append(1, i, i + 1, 3, &small[..(i as usize * 20)])));
        }
        let big = p.append(1, 9, 8, 7, &large);
        assert_eq!(big >> 16, 2, "a chunk of its own");
        assert_eq!(handles[99].1 >> 16, 1, "the small ones spill into a second chunk");
        let mut into = vec![1, 2, 3];
        for (i, h) in handles {
            assert_eq!(p.read(1, h, &mut into), (i, i + 1, 3));
            assert_eq!(into, &small[..(i as usize * 20)]);
        }
        assert_eq!(p.read(1, big, &mut into), (9, 8, 7));
        assert_eq!(into, large);
        p.clear(1);
        assert_eq!(p.spare.len(), 2, "the two 64 KiB chunks are kept, the large one is not");
        // A new packet reuses a kept chunk, from its start.
        assert_eq!(p.append(0, 1, 2, 3, b"x"), 0);
        assert_eq!(p.read(0, 0, &mut into), (1, 2, 3));
        assert_eq!(into, b"x");
    }
}
