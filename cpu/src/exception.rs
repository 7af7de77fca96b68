//! Guest exceptions: values raised by instructions and delivered through the IVT/IDT.
//! They never travel to the host as errors.

/// An architectural exception (Intel SDM vol. 3A, table 6-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// #DE, vector 0.
    DivideError,
    /// #DB, vector 1.
    Debug,
    /// #BP, vector 3 (from INT3).
    Breakpoint,
    /// #OF, vector 4 (from INTO).
    Overflow,
    /// #BR, vector 5.
    BoundRange,
    /// #UD, vector 6.
    InvalidOpcode,
    /// #NM, vector 7.
    DeviceNotAvailable,
    /// #DF, vector 8.
    DoubleFault,
    /// #TS, vector 10, with error code.
    InvalidTss(u16),
    /// #NP, vector 11, with error code.
    SegmentNotPresent(u16),
    /// #SS, vector 12, with error code.
    StackFault(u16),
    /// #GP, vector 13, with error code.
    GeneralProtection(u16),
    /// #PF, vector 14: faulting linear address and error code.
    PageFault {
        /// Goes to CR2.
        addr: u64,
        /// The error code pushed.
        code: u32,
    },
    /// #MF, vector 16.
    FloatingPoint,
    /// #AC, vector 17.
    AlignmentCheck,
    /// #XM, vector 19.
    SimdFloatingPoint,
}

impl Exception {
    /// The interrupt vector.
    pub fn vector(&self) -> u8 {
        match self {
            Exception::DivideError => 0,
            Exception::Debug => 1,
            Exception::Breakpoint => 3,
            Exception::Overflow => 4,
            Exception::BoundRange => 5,
            Exception::InvalidOpcode => 6,
            Exception::DeviceNotAvailable => 7,
            Exception::DoubleFault => 8,
            Exception::InvalidTss(_) => 10,
            Exception::SegmentNotPresent(_) => 11,
            Exception::StackFault(_) => 12,
            Exception::GeneralProtection(_) => 13,
            Exception::PageFault { .. } => 14,
            Exception::FloatingPoint => 16,
            Exception::AlignmentCheck => 17,
            Exception::SimdFloatingPoint => 19,
        }
    }

    /// The error code pushed in protected mode, if the exception has one.
    pub fn error_code(&self) -> Option<u32> {
        match *self {
            Exception::DoubleFault | Exception::AlignmentCheck => Some(0),
            Exception::InvalidTss(c)
            | Exception::SegmentNotPresent(c)
            | Exception::StackFault(c)
            | Exception::GeneralProtection(c) => Some(u32::from(c)),
            Exception::PageFault { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Contributory exceptions (SDM table 6-4) escalate to #DF when raised while delivering one.
    pub fn is_contributory(&self) -> bool {
        matches!(
            self,
            Exception::DivideError
                | Exception::InvalidTss(_)
                | Exception::SegmentNotPresent(_)
                | Exception::StackFault(_)
                | Exception::GeneralProtection(_)
        )
    }
}
