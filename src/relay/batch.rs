//! Consecutive pieces of one read chunk, written on in one call.

use std::io;
use std::task::Context;

use super::{Leg, Side};

/// Consecutive pieces of one read chunk, written on in one call: the scanner reports a run of
/// data frames, then a control frame on its own (from its hold buffer when it was split over
/// reads), then the next run; a write per piece would cost a syscall (and a TCP segment)
/// each.
pub(super) struct Batch<'d> {
    data: &'d [u8],
    start: usize,
    end: usize,
}

impl<'d> Batch<'d> {
    pub(super) fn new(data: &'d [u8]) -> Self {
        Batch {
            data,
            start: 0,
            end: 0,
        }
    }

    /// Where `bytes` start in `data`, if they are part of it (a held frame head or control
    /// frame comes from the scanner's own buffer instead).
    fn offset(&self, bytes: &[u8]) -> Option<usize> {
        let base = self.data.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        (at >= base && at + bytes.len() <= base + self.data.len()).then(|| at - base)
    }

    /// Adds `bytes`: extends the run if they follow it in `data`, else writes the run first.
    pub(super) fn add<Z: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut Side<Z>,
        bytes: &[u8],
    ) -> io::Result<()> {
        if let Some(off) = self.offset(bytes) {
            if self.start < self.end && off == self.end {
                self.end += bytes.len();
                return Ok(());
            }
            self.flush(cx, to)?;
            self.start = off;
            self.end = off + bytes.len();
            Ok(())
        } else {
            // Not part of the chunk (a held frame head or control frame).
            self.flush(cx, to)?;
            to.send(cx, bytes)
        }
    }

    /// [`add`](Self::add); `last`: `bytes` are the last `to` gets (a close frame that ends its
    /// closing handshake): the run and they go in one write as such (`Side::send_as`). A
    /// control frame comes from the scanner's hold buffer, not the chunk: then the run and
    /// the frame are joined in a copy (once per session).
    pub(super) fn add_as<Z: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut Side<Z>,
        bytes: &[u8],
        last: bool,
    ) -> io::Result<()> {
        if !last {
            return self.add(cx, to, bytes);
        }
        if let Some(off) = self.offset(bytes)
            && (self.start >= self.end || off == self.end)
        {
            if self.start >= self.end {
                self.start = off;
            }
            self.end = off + bytes.len();
            return self.flush_as(cx, to, true);
        }
        if self.start >= self.end {
            return to.send_as(cx, bytes, true);
        }
        let joined = [&self.data[self.start..self.end], bytes].concat();
        self.start = self.end;
        to.send_as(cx, &joined, true)
    }

    pub(super) fn flush<Z: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut Side<Z>,
    ) -> io::Result<()> {
        self.flush_as(cx, to, false)
    }

    /// [`flush`](Self::flush); `last`: the run is the last `to` gets (`Side::send_as`).
    fn flush_as<Z: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut Side<Z>,
        last: bool,
    ) -> io::Result<()> {
        if self.start >= self.end {
            return Ok(());
        }
        let run = &self.data[self.start..self.end];
        self.start = self.end;
        to.send_as(cx, run, last)
    }
}
