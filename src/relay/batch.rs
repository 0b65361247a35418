//! Consecutive pieces of one read chunk, written on in one call.

use std::io;
use std::task::Context;

use super::{Leg, Side};

/// Consecutive pieces of one read chunk, written on in one call: the scanner reports each
/// frame separately, and a write per frame would cost a syscall (and a TCP segment) per
/// message when many small messages arrive in one read.
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

    /// Adds `bytes`: extends the run if they follow it in `data`, else writes the run first.
    pub(super) fn add<Z: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut Side<Z>,
        bytes: &[u8],
    ) -> io::Result<()> {
        let base = self.data.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        if at >= base && at + bytes.len() <= base + self.data.len() {
            let off = at - base;
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

    pub(super) fn flush<Z: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut Side<Z>,
    ) -> io::Result<()> {
        if self.start >= self.end {
            return Ok(());
        }
        let run = &self.data[self.start..self.end];
        self.start = self.end;
        to.send(cx, run)
    }
}
