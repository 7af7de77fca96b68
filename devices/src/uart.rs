//! A National Semiconductor 16550A UART.
//!
//! The chip is modelled at register level: 8 registers at offsets 0–7 (the divisor latch
//! overlays offsets 0 and 1 while `LCR_DLAB` is set), 16-byte receive FIFO with trigger levels,
//! interrupt identification with the datasheet priority (receiver line status > received data
//! available / character timeout > transmitter holding register empty > modem status), modem
//! control with loopback, and the scratch register.
//!
//! Transmission is instantaneous: a byte written to THR goes straight to the output sink `W`
//! (or, in loopback mode, into the receive FIFO), so THR and the transmitter are always empty.
//! Simplification: the character-timeout interrupt is reported whenever the FIFO holds data
//! below the trigger level, instead of after four character times of silence; the guest then
//! drains the FIFO exactly as it would after a real timeout.
//!
//! Host input enters with [`Uart16550::enqueue_rx`], which accepts at most the free FIFO space
//! (flow control: the host keeps what does not fit and retries when [`Uart16550::rx_space`] grows).

use crate::bus::{Access, IrqLine, PioDevice};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;

/// Receiver buffer register (read, DLAB = 0).
pub const RBR: u64 = 0;
/// Transmitter holding register (write, DLAB = 0).
pub const THR: u64 = 0;
/// Divisor latch, low byte (DLAB = 1).
pub const DLL: u64 = 0;
/// Interrupt enable register (DLAB = 0).
pub const IER: u64 = 1;
/// Divisor latch, high byte (DLAB = 1).
pub const DLM: u64 = 1;
/// Interrupt identification register (read).
pub const IIR: u64 = 2;
/// FIFO control register (write).
pub const FCR: u64 = 2;
/// Line control register.
pub const LCR: u64 = 3;
/// Modem control register.
pub const MCR: u64 = 4;
/// Line status register.
pub const LSR: u64 = 5;
/// Modem status register.
pub const MSR: u64 = 6;
/// Scratch register.
pub const SCR: u64 = 7;

/// IER: received data available (and character timeout).
pub const IER_RDA: u8 = 0x01;
/// IER: transmitter holding register empty.
pub const IER_THRE: u8 = 0x02;
/// IER: receiver line status.
pub const IER_RLS: u8 = 0x04;
/// IER: modem status.
pub const IER_MSI: u8 = 0x08;
const IER_MASK: u8 = 0x0F;

/// IIR: no interrupt pending.
pub const IIR_NO_INT: u8 = 0x01;
/// IIR id: modem status.
pub const IIR_MSI: u8 = 0x00;
/// IIR id: transmitter holding register empty.
pub const IIR_THRE: u8 = 0x02;
/// IIR id: received data available.
pub const IIR_RDA: u8 = 0x04;
/// IIR id: receiver line status.
pub const IIR_RLS: u8 = 0x06;
/// IIR id: character timeout.
pub const IIR_TIMEOUT: u8 = 0x0C;
/// IIR: FIFOs enabled (both bits).
pub const IIR_FIFO_ENABLED: u8 = 0xC0;

/// FCR: enable the FIFOs.
pub const FCR_FIFO_ENABLE: u8 = 0x01;
/// FCR: clear the receive FIFO.
pub const FCR_RX_RESET: u8 = 0x02;
/// FCR: clear the transmit FIFO.
pub const FCR_TX_RESET: u8 = 0x04;
/// FCR: DMA mode select.
pub const FCR_DMA_MODE: u8 = 0x08;
/// FCR: receive trigger level field.
pub const FCR_TRIGGER_MASK: u8 = 0xC0;

/// LCR: word length field.
pub const LCR_WORD_LENGTH: u8 = 0x03;
/// LCR: break control.
pub const LCR_BREAK: u8 = 0x40;
/// LCR: divisor latch access bit.
pub const LCR_DLAB: u8 = 0x80;

/// MCR: data terminal ready.
pub const MCR_DTR: u8 = 0x01;
/// MCR: request to send.
pub const MCR_RTS: u8 = 0x02;
/// MCR: OUT1.
pub const MCR_OUT1: u8 = 0x04;
/// MCR: OUT2 (gates the interrupt on PC serial cards).
pub const MCR_OUT2: u8 = 0x08;
/// MCR: loopback mode.
pub const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1F;

/// LSR: data ready.
pub const LSR_DATA_READY: u8 = 0x01;
/// LSR: overrun error.
pub const LSR_OVERRUN: u8 = 0x02;
/// LSR: parity error.
pub const LSR_PARITY_ERROR: u8 = 0x04;
/// LSR: framing error.
pub const LSR_FRAMING_ERROR: u8 = 0x08;
/// LSR: break interrupt.
pub const LSR_BREAK: u8 = 0x10;
/// LSR: transmitter holding register empty.
pub const LSR_THRE: u8 = 0x20;
/// LSR: transmitter empty.
pub const LSR_TEMT: u8 = 0x40;
/// LSR: error in receiver FIFO.
pub const LSR_FIFO_ERROR: u8 = 0x80;
const LSR_ERRORS: u8 = LSR_OVERRUN | LSR_PARITY_ERROR | LSR_FRAMING_ERROR | LSR_BREAK;

/// MSR: delta clear to send.
pub const MSR_DCTS: u8 = 0x01;
/// MSR: delta data set ready.
pub const MSR_DDSR: u8 = 0x02;
/// MSR: trailing edge ring indicator.
pub const MSR_TERI: u8 = 0x04;
/// MSR: delta data carrier detect.
pub const MSR_DDCD: u8 = 0x08;
/// MSR: clear to send.
pub const MSR_CTS: u8 = 0x10;
/// MSR: data set ready.
pub const MSR_DSR: u8 = 0x20;
/// MSR: ring indicator.
pub const MSR_RI: u8 = 0x40;
/// MSR: data carrier detect.
pub const MSR_DCD: u8 = 0x80;
const MSR_DELTAS: u8 = MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD;

/// FIFO depth of the 16550A.
pub const FIFO_SIZE: usize = 16;
/// The UART input clock divided by 16: the baud rate with divisor 1.
pub const BAUD_BASE: u32 = 115_200;

/// The register state of a [`Uart16550`], for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uart16550State {
    /// Interrupt enable register.
    pub ier: u8,
    /// Last value written to FCR (bits 0, 3, 6, 7 are kept).
    pub fcr: u8,
    /// Line control register.
    pub lcr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Line status register error bits (data ready and THRE are derived).
    pub lsr_errors: u8,
    /// Modem status register as seen by the guest (in loopback it is derived from MCR).
    pub msr: u8,
    /// Scratch register.
    pub scr: u8,
    /// Divisor latch low byte.
    pub dll: u8,
    /// Divisor latch high byte.
    pub dlm: u8,
    /// Receive FIFO (a one-byte holding register while FIFOs are disabled).
    pub rx: VecDeque<u8>,
    /// A THRE interrupt is pending (cleared by reading IIR while it is reported, or writing THR).
    pub thre_pending: bool,
}

impl Default for Uart16550State {
    fn default() -> Self {
        Uart16550State {
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            msr: MSR_DCD | MSR_DSR | MSR_CTS,
            scr: 0,
            // 9600 baud, the usual power-on BIOS setting.
            dll: 12,
            dlm: 0,
            rx: VecDeque::new(),
            thre_pending: false,
        }
    }
}

/// A 16550A UART raising its interrupt on `I` and transmitting to `W`.
#[derive(Debug)]
pub struct Uart16550<I: IrqLine, W: Write> {
    s: Uart16550State,
    irq: I,
    out: W,
    irq_level: bool,
}

impl<I: IrqLine, W: Write> Uart16550<I, W> {
    /// A UART in its power-on state.
    pub fn new(irq: I, out: W) -> Self {
        Self::from_state(Uart16550State::default(), irq, out)
    }

    /// Rebuilds a UART from a snapshot; drives the interrupt line to the restored level.
    pub fn from_state(state: Uart16550State, irq: I, out: W) -> Self {
        let mut u = Uart16550 { s: state, irq, out, irq_level: false };
        let level = u.interrupt_id().is_some();
        u.irq_level = level;
        u.irq.set_level(level);
        u
    }

    /// A snapshot of the register state.
    pub fn state(&self) -> Uart16550State {
        self.s.clone()
    }

    /// The output sink.
    pub fn writer(&self) -> &W {
        &self.out
    }

    /// The output sink, mutably.
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The interrupt line.
    pub fn irq(&self) -> &I {
        &self.irq
    }

    fn fifo_enabled(&self) -> bool {
        self.s.fcr & FCR_FIFO_ENABLE != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    fn rx_trigger(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        match self.s.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    /// Free space in the receive FIFO: how many bytes [`Uart16550::enqueue_rx`] would accept.
    pub fn rx_space(&self) -> usize {
        self.rx_capacity().saturating_sub(self.s.rx.len())
    }

    /// Offers host input to the receiver. Accepts as many bytes as fit in the receive FIFO and
    /// returns how many were taken; the caller keeps the rest. In loopback mode the receiver is
    /// disconnected from the line and nothing is accepted.
    pub fn enqueue_rx(&mut self, bytes: &[u8]) -> usize {
        if self.s.mcr & MCR_LOOP != 0 {
            return 0;
        }
        let n = bytes.len().min(self.rx_space());
        self.s.rx.extend(&bytes[..n]);
        if n > 0 {
            self.update_irq();
        }
        n
    }

    /// Sets the modem status inputs from the host side (ignored for the guest-visible MSR while
    /// in loopback). Changes set the delta bits.
    pub fn set_modem_inputs(&mut self, cts: bool, dsr: bool, ri: bool, dcd: bool) {
        if self.s.mcr & MCR_LOOP != 0 {
            return;
        }
        let new =
            (u8::from(cts) * MSR_CTS) | (u8::from(dsr) * MSR_DSR) | (u8::from(ri) * MSR_RI) | (u8::from(dcd) * MSR_DCD);
        self.set_msr_lines(new);
        self.update_irq();
    }

    fn set_msr_lines(&mut self, new: u8) {
        let old = self.s.msr;
        let changed = (old ^ new) & 0xF0;
        let mut deltas = self.s.msr & MSR_DELTAS;
        if changed & MSR_CTS != 0 {
            deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            deltas |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            deltas |= MSR_DDCD;
        }
        // Trailing edge of RI only.
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            deltas |= MSR_TERI;
        }
        self.s.msr = (new & 0xF0) | deltas;
    }

    /// The modem status lines in loopback: CTS = RTS, DSR = DTR, RI = OUT1, DCD = OUT2.
    fn loopback_msr(mcr: u8) -> u8 {
        let mut m = 0;
        if mcr & MCR_RTS != 0 {
            m |= MSR_CTS;
        }
        if mcr & MCR_DTR != 0 {
            m |= MSR_DSR;
        }
        if mcr & MCR_OUT1 != 0 {
            m |= MSR_RI;
        }
        if mcr & MCR_OUT2 != 0 {
            m |= MSR_DCD;
        }
        m
    }

    /// The divisor latch value.
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.s.dll, self.s.dlm])
    }

    /// The programmed baud rate (0 if the divisor is 0).
    pub fn baud_rate(&self) -> u32 {
        match self.divisor() {
            0 => 0,
            d => BAUD_BASE / u32::from(d),
        }
    }

    fn lsr(&self) -> u8 {
        let mut lsr = self.s.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.s.rx.is_empty() {
            lsr |= LSR_DATA_READY;
        }
        lsr
    }

    /// The highest-priority pending interrupt's IIR id, if any.
    fn interrupt_id(&self) -> Option<u8> {
        let ier = self.s.ier;
        if ier & IER_RLS != 0 && self.s.lsr_errors & LSR_ERRORS != 0 {
            return Some(IIR_RLS);
        }
        if ier & IER_RDA != 0 && !self.s.rx.is_empty() {
            return Some(if self.s.rx.len() >= self.rx_trigger() { IIR_RDA } else { IIR_TIMEOUT });
        }
        if ier & IER_THRE != 0 && self.s.thre_pending {
            return Some(IIR_THRE);
        }
        if ier & IER_MSI != 0 && self.s.msr & MSR_DELTAS != 0 {
            return Some(IIR_MSI);
        }
        None
    }

    fn update_irq(&mut self) {
        let level = self.interrupt_id().is_some();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn receive(&mut self, byte: u8) {
        if self.s.rx.len() >= self.rx_capacity() {
            self.s.lsr_errors |= LSR_OVERRUN;
        } else {
            self.s.rx.push_back(byte);
        }
    }

    fn write_thr(&mut self, byte: u8) {
        // Writing THR clears the THRE interrupt; the byte then leaves at once and THR is empty
        // again, which re-raises it (a fresh edge on the line).
        self.s.thre_pending = false;
        self.update_irq();
        if self.s.mcr & MCR_LOOP != 0 {
            self.receive(byte);
        } else if let Err(e) = self.out.write_all(&[byte]).and_then(|()| self.out.flush()) {
            log::debug!("uart: output error: {e}");
        }
        self.s.thre_pending = true;
    }

    /// Reads the register at `offset` (0–7).
    pub fn read_reg(&mut self, offset: u64) -> u8 {
        let dlab = self.s.lcr & LCR_DLAB != 0;
        let v = match offset {
            DLL if dlab => self.s.dll,
            DLM if dlab => self.s.dlm,
            RBR => self.s.rx.pop_front().unwrap_or(0),
            IER => self.s.ier,
            IIR => {
                let id = self.interrupt_id();
                if id == Some(IIR_THRE) {
                    self.s.thre_pending = false;
                }
                let fifo = if self.fifo_enabled() { IIR_FIFO_ENABLED } else { 0 };
                fifo | id.unwrap_or(IIR_NO_INT)
            }
            LCR => self.s.lcr,
            MCR => self.s.mcr,
            LSR => {
                let v = self.lsr();
                self.s.lsr_errors = 0;
                v
            }
            MSR => {
                let v = self.s.msr;
                self.s.msr &= !MSR_DELTAS;
                v
            }
            SCR => self.s.scr,
            _ => {
                log::debug!("uart: read of bad offset {offset:#x}");
                return 0xFF;
            }
        };
        self.update_irq();
        v
    }

    /// Writes `v` to the register at `offset` (0–7).
    pub fn write_reg(&mut self, offset: u64, v: u8) {
        let dlab = self.s.lcr & LCR_DLAB != 0;
        match offset {
            DLL if dlab => self.s.dll = v,
            DLM if dlab => self.s.dlm = v,
            THR => self.write_thr(v),
            IER => {
                let old = self.s.ier;
                self.s.ier = v & IER_MASK;
                // Enabling THRE while THR is empty raises the interrupt immediately.
                if old & IER_THRE == 0 && v & IER_THRE != 0 {
                    self.s.thre_pending = true;
                }
            }
            FCR => {
                let was_enabled = self.fifo_enabled();
                let enable = v & FCR_FIFO_ENABLE != 0;
                if enable != was_enabled || v & FCR_RX_RESET != 0 {
                    self.s.rx.clear();
                }
                // TX is instantaneous, so FCR_TX_RESET has nothing to clear.
                self.s.fcr = if enable { v & (FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_TRIGGER_MASK) } else { 0 };
            }
            LCR => self.s.lcr = v,
            MCR => {
                let v = v & MCR_MASK;
                let was_loop = self.s.mcr & MCR_LOOP != 0;
                self.s.mcr = v;
                if v & MCR_LOOP != 0 {
                    self.set_msr_lines(Self::loopback_msr(v));
                } else if was_loop {
                    // Back to the line: the host-side inputs are asserted.
                    self.set_msr_lines(MSR_DCD | MSR_DSR | MSR_CTS);
                }
            }
            LSR | MSR => log::debug!("uart: write {v:#x} to read-only offset {offset}"),
            SCR => self.s.scr = v,
            _ => log::debug!("uart: write {v:#x} to bad offset {offset:#x}"),
        }
        self.update_irq();
    }
}

impl<I: IrqLine, W: Write> PioDevice for Uart16550<I, W> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.read_reg(access.offset);
        } else {
            log::debug!("uart: {}-byte read at {:#x}", data.len(), access.addr);
            data.fill(0xFF);
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        if let [v] = data {
            self.write_reg(access.offset, *v);
        } else {
            log::debug!("uart: {}-byte write at {:#x}", data.len(), access.addr);
        }
    }
}

impl<I: IrqLine, W: Write> base::Persist for Uart16550<I, W> {
    type State = Uart16550State;
    /// The interrupt line and the output sink.
    type ConstructorArgs = (I, W);
    type Error = std::convert::Infallible;
    fn save(&self) -> Uart16550State {
        self.state()
    }
    fn restore((irq, out): (I, W), state: &Uart16550State) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone(), irq, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::RecordingIrq;

    fn uart() -> (Uart16550<RecordingIrq, Vec<u8>>, RecordingIrq) {
        let irq = RecordingIrq::new();
        (Uart16550::new(irq.clone(), Vec::new()), irq)
    }

    #[test]
    fn test_uart_tx_to_sink() {
        let (mut u, irq) = uart();
        for &b in b"hello" {
            assert_ne!(u.read_reg(LSR) & LSR_THRE, 0);
            u.write_reg(THR, b);
        }
        assert_eq!(u.writer(), b"hello");
        assert_eq!(u.read_reg(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(irq.rising_edges(), 0);
    }

    #[test]
    fn test_uart_rx_and_rda_interrupt() {
        let (mut u, irq) = uart();
        assert_eq!(u.read_reg(LSR) & LSR_DATA_READY, 0);
        u.write_reg(IER, IER_RDA);
        assert_eq!(u.enqueue_rx(b"ab"), 1, "no FIFO: one-byte holding register");
        assert!(irq.level());
        assert_eq!(u.read_reg(IIR), IIR_RDA);
        assert_eq!(u.read_reg(LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(u.read_reg(RBR), b'a');
        assert!(!irq.level());
        assert_eq!(u.read_reg(IIR), IIR_NO_INT);
        assert_eq!(u.read_reg(LSR) & LSR_DATA_READY, 0);
        assert_eq!(irq.rising_edges(), 1);
    }

    #[test]
    fn test_uart_fifo_trigger_and_timeout() {
        let (mut u, irq) = uart();
        u.write_reg(FCR, FCR_FIFO_ENABLE | FCR_RX_RESET | 0x80); // trigger level 8
        u.write_reg(IER, IER_RDA);
        assert_eq!(u.rx_space(), 16);
        assert_eq!(u.enqueue_rx(&[1, 2, 3]), 3);
        assert_eq!(u.read_reg(IIR), IIR_FIFO_ENABLED | IIR_TIMEOUT);
        assert_eq!(u.enqueue_rx(&[4, 5, 6, 7, 8]), 5);
        assert_eq!(u.read_reg(IIR), IIR_FIFO_ENABLED | IIR_RDA);
        assert_eq!(u.enqueue_rx(&[0; 20]), 8, "only the free space is accepted");
        assert_eq!(u.rx_space(), 0);
        let got: Vec<u8> = (0..16).map(|_| u.read_reg(RBR)).collect();
        assert_eq!(&got[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(u.read_reg(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
        assert!(!irq.level());
        // FCR RX reset clears the FIFO.
        u.enqueue_rx(b"xy");
        u.write_reg(FCR, FCR_FIFO_ENABLE | FCR_RX_RESET);
        assert_eq!(u.read_reg(LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn test_uart_loopback() {
        let (mut u, irq) = uart();
        u.write_reg(FCR, FCR_FIFO_ENABLE);
        u.write_reg(MCR, MCR_LOOP | MCR_RTS | MCR_OUT2);
        u.read_reg(MSR); // clear deltas from entering loopback
        assert_eq!(u.read_reg(MSR), MSR_CTS | MSR_DCD);
        u.write_reg(MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
        assert_eq!(u.read_reg(MSR), MSR_DSR | MSR_RI | MSR_DDSR | MSR_DCTS | MSR_DDCD);
        u.write_reg(THR, 0x5A);
        u.write_reg(THR, 0xA5);
        assert!(u.writer().is_empty(), "loopback output does not reach the line");
        assert_eq!(u.enqueue_rx(b"z"), 0, "receiver is disconnected from the line");
        assert_eq!(u.read_reg(LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(u.read_reg(RBR), 0x5A);
        assert_eq!(u.read_reg(RBR), 0xA5);
        // Overrun when the FIFO is full.
        for i in 0..17 {
            u.write_reg(THR, i);
        }
        assert_eq!(u.read_reg(LSR) & LSR_OVERRUN, LSR_OVERRUN);
        assert_eq!(u.read_reg(LSR) & LSR_OVERRUN, 0, "reading LSR clears errors");
        u.write_reg(MCR, MCR_OUT2);
        u.write_reg(THR, b'!');
        assert_eq!(u.writer(), b"!");
        assert_eq!(irq.rising_edges(), 0);
    }

    #[test]
    fn test_uart_iir_priorities() {
        let (mut u, irq) = uart();
        u.write_reg(FCR, FCR_FIFO_ENABLE);
        u.write_reg(MCR, MCR_LOOP);
        // Modem status delta (DCD drops when OUT2 is cleared in loopback).
        u.write_reg(MCR, MCR_LOOP | MCR_RTS);
        u.write_reg(THR, 1);
        for _ in 0..16 {
            u.write_reg(THR, 2);
        }
        // Now: overrun error, data available, THRE pending, MSR deltas.
        u.write_reg(IER, IER_RDA | IER_THRE | IER_RLS | IER_MSI);
        assert!(irq.level());
        assert_eq!(u.read_reg(IIR) & 0x0F, IIR_RLS);
        u.read_reg(LSR);
        assert_eq!(u.read_reg(IIR) & 0x0F, IIR_RDA);
        while u.read_reg(LSR) & LSR_DATA_READY != 0 {
            u.read_reg(RBR);
        }
        assert_eq!(u.read_reg(IIR) & 0x0F, IIR_THRE);
        // Reading IIR while THRE is reported clears it.
        assert_eq!(u.read_reg(IIR) & 0x0F, IIR_MSI);
        u.read_reg(MSR);
        assert_eq!(u.read_reg(IIR) & 0x0F, IIR_NO_INT);
        assert!(!irq.level());
    }

    #[test]
    fn test_uart_thre_interrupt() {
        let (mut u, irq) = uart();
        u.write_reg(IER, IER_THRE);
        assert!(irq.level(), "enabling THRE with THR empty interrupts at once");
        assert_eq!(u.read_reg(IIR), IIR_THRE);
        assert!(!irq.level(), "IIR read clears THRE");
        assert_eq!(u.read_reg(IIR), IIR_NO_INT);
        irq.clear();
        u.write_reg(THR, b'a');
        u.write_reg(THR, b'b');
        assert_eq!(irq.rising_edges(), 2, "each transmitted byte gives a fresh edge");
        assert!(irq.level());
        u.write_reg(IER, 0);
        assert!(!irq.level());
        u.write_reg(IER, IER_THRE);
        assert!(irq.level());
    }

    #[test]
    fn test_uart_divisor_latch_and_scratch() {
        let (mut u, _irq) = uart();
        u.write_reg(IER, IER_RDA);
        u.write_reg(LCR, LCR_DLAB | 0x03);
        u.write_reg(DLL, 0x01);
        u.write_reg(DLM, 0x00);
        assert_eq!(u.read_reg(DLL), 1);
        assert_eq!(u.read_reg(DLM), 0);
        assert_eq!(u.baud_rate(), 115_200);
        u.write_reg(LCR, 0x03);
        assert_eq!(u.read_reg(IER), IER_RDA, "IER is untouched by divisor writes");
        assert_eq!(u.read_reg(LCR), 0x03);
        assert!(u.writer().is_empty(), "DLL writes are not transmitted");
        u.write_reg(SCR, 0x42);
        assert_eq!(u.read_reg(SCR), 0x42);
        assert_eq!(u.read_reg(8), 0xFF);
        let mut d = [0u8; 2];
        u.read(Access::at(0, base::VirtualInstant(0)), &mut d);
        assert_eq!(d, [0xFF, 0xFF]);
    }

    #[test]
    fn test_uart_state_roundtrip() {
        let (mut u, _irq) = uart();
        u.write_reg(FCR, FCR_FIFO_ENABLE);
        u.write_reg(IER, IER_RDA);
        u.enqueue_rx(b"abc");
        let st = u.state();
        let irq2 = RecordingIrq::new();
        let mut v = Uart16550::from_state(st.clone(), irq2.clone(), Vec::new());
        assert!(irq2.level(), "restore re-raises the pending interrupt");
        assert_eq!(v.state(), st);
        assert_eq!(v.read_reg(RBR), b'a');
        assert_ne!(v.state(), st);
    }
}
