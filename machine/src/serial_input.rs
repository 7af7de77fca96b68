//! Host input for COM1, entering the guest at virtual-time stamps so that a run with the same
//! input is the same run.
//!
//! Input is a list of (virtual instant, bytes). Bytes reach the UART's receive FIFO when the
//! machine's virtual time reaches their stamp: at a run-slice boundary (the board ends a slice
//! at the next stamp, like a timer deadline) or when the guest reads the receiver and frees
//! FIFO space. What does not fit in the FIFO waits, in order, and its delivery time depends only
//! on the guest's own reads. Live input (a host thread reading the terminal) only enqueues into
//! a channel; the machine drains the channel at slice boundaries, stamps each chunk with the
//! virtual time of that boundary and records it ([`crate::Machine::serial_input_log`]), so the
//! run can be replayed exactly with [`crate::Machine::queue_serial_input`].
//!
//! Input that is stamped but not yet in the FIFO is part of a snapshot ([`SerialInputState`]),
//! so a restored machine receives the rest at the same virtual instants as the original would.
//! The live source and its log belong to the host process and are not saved.

use base::{Persist, VirtualInstant};
use devices::{IrqLine, Uart16550};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};

/// Input waiting for COM1.
#[derive(Debug, Default)]
pub(crate) struct SerialInput {
    /// Stamped chunks, in time order.
    pending: VecDeque<(VirtualInstant, Vec<u8>)>,
    /// Live host input.
    source: Option<Receiver<Vec<u8>>>,
    /// Everything that was stamped from the live source.
    log: Vec<(VirtualInstant, Vec<u8>)>,
    /// The FIFO was full at the last delivery with due input left.
    blocked: bool,
}

impl SerialInput {
    /// Adds `bytes` to arrive at `at` (after anything already due at or before `at`).
    pub(crate) fn schedule(&mut self, at: VirtualInstant, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let pos = self.pending.partition_point(|(t, _)| *t <= at);
        self.pending.insert(pos, (at, bytes));
    }

    /// Connects a live source.
    pub(crate) fn connect(&mut self, rx: Receiver<Vec<u8>>) {
        self.source = Some(rx);
    }

    /// The stamped live input so far.
    pub(crate) fn log(&self) -> &[(VirtualInstant, Vec<u8>)] {
        &self.log
    }

    /// Takes what the live source has produced, stamped `now`.
    pub(crate) fn poll_source(&mut self, now: VirtualInstant) {
        let Some(rx) = &self.source else { return };
        let mut got = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(chunk) => got.extend(chunk),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.source = None;
                    break;
                }
            }
        }
        if !got.is_empty() {
            self.log.push((now, got.clone()));
            self.schedule(now, got);
        }
    }

    /// Moves due input into the UART's FIFO as far as it has room.
    pub(crate) fn deliver<I: IrqLine, W: std::io::Write>(&mut self, now: VirtualInstant, uart: &mut Uart16550<I, W>) {
        self.blocked = false;
        while let Some((t, bytes)) = self.pending.front_mut() {
            if *t > now {
                break;
            }
            let n = uart.enqueue_rx(bytes);
            bytes.drain(..n);
            if !bytes.is_empty() {
                self.blocked = true;
                break;
            }
            self.pending.pop_front();
        }
    }

    /// When the next input is due (none while the FIFO is full: the guest must read first).
    pub(crate) fn next_deadline(&self) -> Option<VirtualInstant> {
        if self.blocked {
            return None;
        }
        self.pending.front().map(|(t, _)| *t)
    }
}

/// Input for COM1 that was stamped but had not entered the UART's FIFO when the snapshot was
/// taken (what is in the FIFO is in the UART's own state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialInputState {
    /// (virtual instant in ns, bytes), in time order.
    pub pending: Vec<(u64, Vec<u8>)>,
    /// The FIFO was full at the last delivery with due input left.
    pub blocked: bool,
}

impl Persist for SerialInput {
    type State = SerialInputState;
    /// The live host source to keep feeding the restored queue, if any.
    type ConstructorArgs = Option<Receiver<Vec<u8>>>;
    type Error = base::PersistError;

    fn save(&self) -> SerialInputState {
        SerialInputState {
            pending: self.pending.iter().map(|(t, b)| (t.0, b.clone())).collect(),
            blocked: self.blocked,
        }
    }

    /// Refuses a queue out of time order (the delivery loop relies on it).
    fn restore(source: Self::ConstructorArgs, s: &SerialInputState) -> Result<Self, base::PersistError> {
        if s.pending.windows(2).any(|w| w[0].0 > w[1].0) {
            return Err(base::PersistError("serial input queue is not in time order".into()));
        }
        Ok(SerialInput {
            pending: s
                .pending
                .iter()
                .filter(|(_, b)| !b.is_empty())
                .map(|(t, b)| (VirtualInstant(*t), b.clone()))
                .collect(),
            source,
            log: Vec::new(),
            blocked: s.blocked,
        })
    }
}

impl crate::Machine {
    /// Schedules `bytes` to arrive on COM1 at virtual instant `at` (replaying a recorded run,
    /// or scripted input in tests).
    pub fn queue_serial_input(&mut self, at: VirtualInstant, bytes: &[u8]) {
        self.board.serial_in.schedule(at, bytes.to_vec());
    }

    /// Connects live input for COM1 (the CLI's terminal reader thread sends chunks here). The
    /// machine drains it at run-slice boundaries only.
    pub fn connect_serial_input(&mut self, rx: Receiver<Vec<u8>>) {
        self.board.serial_in.connect(rx);
    }

    /// Disconnects the live input source and returns it (to connect it to the machine that
    /// replaces this one, e.g. after a snapshot is loaded).
    pub fn take_serial_input_source(&mut self) -> Option<Receiver<Vec<u8>>> {
        self.board.serial_in.source.take()
    }

    /// The live input received so far, with the virtual instants it entered at: feeding it to
    /// [`crate::Machine::queue_serial_input`] reproduces the run.
    pub fn serial_input_log(&self) -> &[(VirtualInstant, Vec<u8>)] {
        self.board.serial_in.log()
    }
}

/// Writes an input log as text: one line per chunk, the virtual instant in nanoseconds and the
/// bytes in hex (`1048576 68690a`).
pub fn format_input_log(log: &[(VirtualInstant, Vec<u8>)]) -> String {
    let mut s = String::new();
    for (t, bytes) in log {
        s.push_str(&t.0.to_string());
        s.push(' ');
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('\n');
    }
    s
}

/// Reads what [`format_input_log`] wrote; blank lines and lines starting with `#` are skipped.
pub fn parse_input_log(text: &str) -> Result<Vec<(VirtualInstant, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        let (t, hex) = line.split_once(' ').ok_or_else(|| bad("expected `<nanoseconds> <hex bytes>`"))?;
        let t: u64 = t.parse().map_err(|_| bad("bad virtual time"))?;
        let hex = hex.trim();
        if hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("bad hex bytes"));
        }
        let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0)).collect();
        out.push((VirtualInstant(t), bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_serial_input_persist_keeps_pending_input() {
        let mut q = SerialInput::default();
        q.schedule(VirtualInstant(500), b"late".to_vec());
        q.schedule(VirtualInstant(100), b"early".to_vec());
        q.blocked = true;
        let s = q.save();
        assert_eq!(s.pending, vec![(100, b"early".to_vec()), (500, b"late".to_vec())]);
        let json = serde_json::to_vec(&s).unwrap();
        let r = SerialInput::restore(None, &serde_json::from_slice(&json).unwrap()).unwrap();
        assert_eq!(r.save(), s);
        assert_eq!(r.next_deadline(), None, "blocked: the guest must read first");
        let unordered = SerialInputState { pending: vec![(5, vec![1]), (4, vec![2])], blocked: false };
        assert!(SerialInput::restore(None, &unordered).is_err());
    }

    #[test]
    fn test_serial_input_log_roundtrip_and_errors() {
        let log = vec![(VirtualInstant(1 << 20), b"hi\n".to_vec()), (VirtualInstant(5_000_000), vec![0, 0xFF])];
        let text = format_input_log(&log);
        assert_eq!(text, "1048576 68690a\n5000000 00ff\n");
        assert_eq!(parse_input_log(&format!("# recorded\n\n{text}")).unwrap(), log);
        for bad in ["12", "x 00", "5 0g", "5 123"] {
            assert!(parse_input_log(bad).is_err(), "{bad}");
        }
    }
}
