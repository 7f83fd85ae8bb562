use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

#[derive(Debug)]
pub(crate) struct BufList<T> {
    bufs: VecDeque<T>,
    /// Tether patch: the sum of the bufs' `remaining()`, kept up to date by every method
    /// that changes `bufs`. Frame decoding asks for `remaining()` several times per
    /// varint (through `Cursor`), and summing the deque each time cost about 300
    /// instructions per varint.
    len: usize,
}

impl<T: Buf> BufList<T> {
    pub(crate) fn new() -> BufList<T> {
        BufList {
            bufs: VecDeque::new(),
            len: 0,
        }
    }

    #[inline]
    #[allow(dead_code)]
    pub(crate) fn push(&mut self, buf: T) {
        debug_assert!(buf.has_remaining());
        self.len += buf.remaining();
        self.bufs.push_back(buf);
    }

    pub fn cursor(&self) -> Cursor<T> {
        Cursor {
            buf: self,
            pos_total: 0,
            index: 0,
            pos_front: 0,
        }
    }
}

impl BufList<Bytes> {
    pub fn take_first_chunk(&mut self) -> Option<Bytes> {
        let chunk = self.bufs.pop_front();
        // Tether patch: keep `len`.
        self.len -= chunk.as_ref().map_or(0, Bytes::len);
        chunk
    }

    pub fn take_chunk(&mut self, max_len: usize) -> Option<Bytes> {
        let chunk = self
            .bufs
            .front_mut()
            .map(|chunk| chunk.split_to(usize::min(max_len, chunk.remaining())));
        // Tether patch: keep `len`.
        self.len -= chunk.as_ref().map_or(0, Bytes::len);

        if let Some(front) = self.bufs.front() {
            if front.remaining() == 0 {
                let _ = self.bufs.pop_front();
            }
        }
        chunk
    }

    pub fn push_bytes<T>(&mut self, buf: &mut T)
    where
        T: Buf,
    {
        debug_assert!(buf.has_remaining());
        let bytes = buf.copy_to_bytes(buf.remaining());
        // Tether patch: keep `len`.
        self.len += bytes.len();
        self.bufs.push_back(bytes)
    }
}

#[cfg(test)]
impl<T: Buf> From<T> for BufList<T> {
    fn from(b: T) -> Self {
        let mut buf = Self::new();
        buf.push(b);
        buf
    }
}

impl<T: Buf> Buf for BufList<T> {
    #[inline]
    fn remaining(&self) -> usize {
        // Tether patch: kept, not summed (see `len`).
        debug_assert_eq!(
            self.len,
            self.bufs.iter().map(Buf::remaining).sum::<usize>()
        );
        self.len
    }

    #[inline]
    fn chunk(&self) -> &[u8] {
        self.bufs.front().map(Buf::chunk).unwrap_or_default()
    }

    #[inline]
    fn advance(&mut self, mut cnt: usize) {
        // Tether patch: keep `len` (advancing past the end panics below, as upstream).
        self.len = self.len.saturating_sub(cnt);
        while cnt > 0 {
            {
                let front = &mut self.bufs[0];
                let rem = front.remaining();
                if rem > cnt {
                    front.advance(cnt);
                    return;
                } else {
                    front.advance(rem);
                    cnt -= rem;
                }
            }
            self.bufs.pop_front();
        }
    }

    #[inline]
    fn chunks_vectored<'t>(&'t self, dst: &mut [IoSlice<'t>]) -> usize {
        if dst.is_empty() {
            return 0;
        }
        let mut vecs = 0;
        for buf in &self.bufs {
            vecs += buf.chunks_vectored(&mut dst[vecs..]);
            if vecs == dst.len() {
                break;
            }
        }
        vecs
    }
}

pub struct Cursor<'a, B> {
    buf: &'a BufList<B>,
    pos_total: usize, // position amongst all bytes
    pos_front: usize, // position in the current front buffer
    index: usize,     // current front buffer index
}

impl<'a, B: Buf> Cursor<'a, B> {
    pub fn position(&self) -> usize {
        self.pos_total
    }
}

impl<'a, B: Buf> Buf for Cursor<'a, B> {
    #[inline]
    fn remaining(&self) -> usize {
        self.buf.remaining() - self.pos_total
    }

    #[inline]
    fn chunk(&self) -> &[u8] {
        // Tether patch: empty at the end, as `Buf::chunk` promises, instead of indexing
        // past the last chunk (upstream's callers check `has_remaining` first; one that
        // did not panicked here).
        self.buf
            .bufs
            .get(self.index)
            .map_or(&[][..], |b| &b.chunk()[self.pos_front..])
    }

    #[inline]
    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.buf.remaining() - self.pos_total);
        while cnt > 0 {
            {
                let front = &self.buf.bufs[self.index];
                let rem = front.remaining() - self.pos_front;
                if rem > cnt {
                    self.pos_total += cnt;
                    self.pos_front += cnt;
                    return;
                } else {
                    self.pos_total += rem;
                    self.pos_front = 0;
                    cnt -= rem;
                }
            }
            self.index += 1;
        }
    }

    #[inline]
    fn chunks_vectored<'t>(&'t self, dst: &mut [IoSlice<'t>]) -> usize {
        self.buf.chunks_vectored(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn cursor_advance() {
        let buf = BufList::from(Bytes::from_static(&[1u8, 2, 3, 4]));
        let mut cur = buf.cursor();
        cur.advance(2);
        assert_eq!(cur.remaining(), 2);
        cur.advance(2);
        assert_eq!(cur.remaining(), 0);
    }
}
