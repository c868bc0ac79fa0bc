/* This Source Code Form is subject to the terms of the Mozilla Public
 * License, v. 2.0. If a copy of the MPL was not distributed with this
 * file, You can obtain one at https://mozilla.org/MPL/2.0/. */
use bytes::{Buf, BufMut};
use postcard::ser_flavors::Flavor as SerFlavor;

use crate::{Codec, Header, Member};

/// `PostcardCodec` encodes/decodes packets using [`postcard`].
#[derive(Debug, Clone, Copy)]
pub struct PostcardCodec;

// XXX We can use Buf::chunk here because Foca guarantees the buffer is
//     contiguous... Maybe a marker trait like `trait ContiguousBuf: Buf {}`
//     or some other form of making it explicit in the type would be
//     helpful?
impl<T> Codec<T> for PostcardCodec
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    type Error = postcard::Error;

    fn encode_header(&mut self, payload: &Header<T>, buf: impl BufMut) -> Result<(), Self::Error> {
        postcard::serialize_with_flavor(payload, WrappedBuf::new(buf))
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<T>, Self::Error> {
        let remaining = buf.remaining();
        debug_assert_eq!(remaining, buf.chunk().len());
        let (payload, rest) = postcard::take_from_bytes(buf.chunk())?;
        let after = rest.len();
        buf.advance(remaining - after);
        Ok(payload)
    }

    fn encode_member(&mut self, member: &Member<T>, buf: impl BufMut) -> Result<(), Self::Error> {
        postcard::serialize_with_flavor(member, WrappedBuf::new(buf))
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<T>, Self::Error> {
        let remaining = buf.remaining();
        debug_assert_eq!(remaining, buf.chunk().len());
        let (member, rest) = postcard::take_from_bytes(buf.chunk())?;
        let after = rest.remaining();
        buf.advance(remaining - after);
        Ok(member)
    }
}

// SPARE: bytes pushed one at a time (postcard writes every `u8` of an
// array, as a 32-byte identity is, with a push of its own) are gathered here
// and handed to the buffer in one `put_slice`: a push each through `BufMut`
// (a limit check and a one-byte copy) was a thirtieth of Spare's simulator.
// The bytes, and where encoding stops for want of room, are the same.
struct WrappedBuf<B: BufMut> {
    buf: B,
    /// Room left in `buf`, less what `pending` holds.
    room: usize,
    pending: [u8; PENDING],
    len: usize,
}

const PENDING: usize = 64;

impl<B: BufMut> WrappedBuf<B> {
    fn new(buf: B) -> Self {
        let room = buf.remaining_mut();
        Self {
            buf,
            room,
            pending: [0; PENDING],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            self.buf.put_slice(&self.pending[..self.len]);
            self.len = 0;
        }
    }
}

// A failed encoding leaves what it wrote before the failure in the buffer,
// as it did unbuffered (postcard drops the flavor without finalizing it).
impl<B: BufMut> Drop for WrappedBuf<B> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl<B: BufMut> SerFlavor for WrappedBuf<B> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.room == 0 {
            return Err(postcard::Error::SerializeBufferFull);
        }
        if self.len == PENDING {
            self.flush();
        }
        self.pending[self.len] = data;
        self.len += 1;
        self.room -= 1;
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Self::Output> {
        self.flush();
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<Self::Output> {
        if self.room >= data.len() {
            self.flush();
            self.buf.put_slice(data);
            self.room -= data.len();
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }
}

#[cfg(test)]
mod test {
    use super::PostcardCodec;

    #[test]
    fn postcard_roundtrip() -> Result<(), postcard::Error> {
        crate::testing::verify_codec_roundtrip(PostcardCodec)
    }

    // SPARE: the gathered pushes write what one push at a time did, and stop
    // where it stopped when the buffer runs out of room.
    #[test]
    fn gathered_pushes_write_the_same_bytes_and_stop_at_the_same_place() {
        use alloc::{string::String, vec::Vec};
        use bytes::BufMut;

        use crate::{Codec, Member, State};

        struct OneByOne<'a>(bytes::buf::Limit<&'a mut Vec<u8>>);
        impl postcard::ser_flavors::Flavor for OneByOne<'_> {
            type Output = ();
            fn try_push(&mut self, data: u8) -> postcard::Result<()> {
                if self.0.has_remaining_mut() {
                    self.0.put_u8(data);
                    Ok(())
                } else {
                    Err(postcard::Error::SerializeBufferFull)
                }
            }
            fn finalize(self) -> postcard::Result<()> {
                Ok(())
            }
            fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
                if self.0.remaining_mut() >= data.len() {
                    self.0.put_slice(data);
                    Ok(())
                } else {
                    Err(postcard::Error::SerializeBufferFull)
                }
            }
        }

        // Longer than the gathering buffer, with a string and varints.
        let id: ([u8; 32], [u8; 32], String, u64) = ([7; 32], [9; 32], String::from("10.0.0.1:7000"), 1 << 40);
        let member = Member::new(id, 513, State::Suspect);
        let mut whole = Vec::new();
        postcard::serialize_with_flavor(&member, OneByOne((&mut whole).limit(usize::MAX))).expect("encodes");
        for limit in 0..=whole.len() + 3 {
            let mut gathered = Vec::from(&b"head"[..]);
            let got = PostcardCodec.encode_member(&member, (&mut gathered).limit(limit));
            let mut one = Vec::from(&b"head"[..]);
            let want = postcard::serialize_with_flavor(&member, OneByOne((&mut one).limit(limit)));
            assert_eq!(got.is_ok(), want.is_ok(), "limit {limit}");
            assert_eq!(gathered, one, "limit {limit}");
        }
    }
}
