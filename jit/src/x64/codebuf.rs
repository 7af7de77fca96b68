//! The executable code buffer: one shared-memory object mapped twice, writable at one address
//! and executable at another (as QEMU's split-W^X buffer), so translating a block or patching a
//! chain is a plain memory copy. dynasmrt's own buffer changes the protection of the whole
//! buffer twice per commit; on the Linux boot those `mprotect` calls cost more host time than
//! running the guest. Hosts that refuse the double mapping get a single read-write-execute
//! mapping; hosts that refuse that too interpret.

use std::ptr::NonNull;

/// A fixed-size code buffer filled from the start; emptied as a whole.
#[derive(Debug)]
pub(crate) struct CodeBuf {
    /// The executable view.
    rx: NonNull<u8>,
    /// The writable view (equal to `rx` for a single RWX mapping).
    rw: NonNull<u8>,
    size: usize,
    len: usize,
}

// SAFETY: the buffer owns its mappings exclusively (no other handle to them exists), so moving
// it to another thread moves sole access with it.
unsafe impl Send for CodeBuf {}

impl CodeBuf {
    /// A buffer of `size` bytes (a multiple of the page size), or `None` if the host gives no
    /// executable memory.
    pub(crate) fn new(size: usize) -> Option<CodeBuf> {
        // perf reads `/tmp/perf-<pid>.map` only for anonymous mappings, not for a memfd.
        if std::env::var("FERRO_JIT_PERFMAP").ok().as_deref() == Some("1") {
            if let Some(b) = Self::rwx(size) {
                return Some(b);
            }
        }
        Self::dual(size).or_else(|| Self::rwx(size))
    }

    fn dual(size: usize) -> Option<CodeBuf> {
        // SAFETY: plain system calls on a file descriptor this function owns and closes; the
        // mappings are checked for failure and owned by the returned buffer (unmapped on drop).
        unsafe {
            let fd = libc::memfd_create(c"ferrovisor-jit".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let ok = libc::ftruncate(fd, size as libc::off_t) == 0;
            let rw = if ok {
                libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
            } else {
                libc::MAP_FAILED
            };
            let rx = if rw != libc::MAP_FAILED {
                libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_SHARED, fd, 0)
            } else {
                libc::MAP_FAILED
            };
            libc::close(fd);
            if rx == libc::MAP_FAILED {
                if rw != libc::MAP_FAILED {
                    libc::munmap(rw, size);
                }
                return None;
            }
            Some(CodeBuf { rx: NonNull::new(rx.cast())?, rw: NonNull::new(rw.cast())?, size, len: 0 })
        }
    }

    fn rwx(size: usize) -> Option<CodeBuf> {
        // SAFETY: an anonymous private mapping, checked for failure, owned by the buffer.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return None;
            }
            let p = NonNull::new(p.cast::<u8>())?;
            Some(CodeBuf { rx: p, rw: p, size, len: 0 })
        }
    }

    /// Bytes used.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Forgets every block (the caller drops all references to them first).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends position-independent code; returns its offset, or `None` if it does not fit.
    pub(crate) fn append(&mut self, code: &[u8]) -> Option<usize> {
        let at = self.len;
        if code.len() > self.size - at {
            return None;
        }
        // SAFETY: `at + code.len() <= size`, inside the writable mapping; no generated code
        // runs while a block is translated (single thread: the dispatcher, or the lookup
        // helper while the block that called it waits), and the range is past every block in
        // use.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.as_ptr().add(at), code.len()) };
        // Keep blocks 16-byte aligned.
        self.len = (at + code.len() + 15) & !15;
        self.len = self.len.min(self.size);
        Some(at)
    }

    /// Overwrites `bytes` at `at` (a chain slot inside emitted code).
    pub(crate) fn patch(&mut self, at: usize, bytes: &[u8]) -> bool {
        if at > self.len || bytes.len() > self.len - at {
            return false;
        }
        // SAFETY: in bounds of the writable mapping (checked above); no generated code runs
        // while the dispatcher patches (single thread). x86 keeps instruction fetch coherent
        // with stores through any mapping of the same memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.rw.as_ptr().add(at), bytes.len()) };
        true
    }

    /// The executable address of offset `at`.
    pub(crate) fn entry(&self, at: usize) -> *const u8 {
        debug_assert!(at < self.len);
        self.rx.as_ptr().wrapping_add(at)
    }

    /// Emitted bytes `[at, at + len)`, if in range.
    pub(crate) fn bytes(&self, at: usize, len: usize) -> Option<&[u8]> {
        if at > self.len || len > self.len - at {
            return None;
        }
        // SAFETY: in bounds of the (readable) executable mapping, which lives as long as
        // `self`; the borrow of `self` keeps it from being written meanwhile.
        Some(unsafe { std::slice::from_raw_parts(self.rx.as_ptr().add(at), len) })
    }
}

impl Drop for CodeBuf {
    fn drop(&mut self) {
        // SAFETY: both mappings were made by `new` with `size` bytes and are not used after
        // this (no block runs once the cache is dropped).
        unsafe {
            libc::munmap(self.rx.as_ptr().cast(), self.size);
            if self.rw != self.rx {
                libc::munmap(self.rw.as_ptr().cast(), self.size);
            }
        }
    }
}
