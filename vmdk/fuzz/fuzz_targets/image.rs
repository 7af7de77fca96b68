//! Fuzzes a whole monolithic image: the bytes become a file that is opened, read, mapped, checked,
//! then written to, flushed and checked again. Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vmdk-fuzz-{}.vmdk", std::process::id()));
    std::fs::File::create(&path).and_then(|mut f| f.write_all(data)).expect("temp file");
    if let Ok(img) = vmdk::Image::open(&path) {
        let mut buf = vec![0u8; 65536];
        let mut off = 0;
        // Bounded: at most 64 MiB of reads per input.
        while off < img.size().min(64 << 20) {
            let n = (img.size() - off).min(buf.len() as u64) as usize;
            if img.read_at(&mut buf[..n], off).is_err() {
                break;
            }
            off += n as u64;
        }
        let _ = img.map();
        let _ = vmdk::check(&path, false);
    }
    if let Ok(img) = vmdk::Image::open_rw(&path) {
        let size = img.size();
        if size > 0 {
            let seed = data.iter().fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
            for i in 0..4u64 {
                let off = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9)) % size;
                let len = (size - off).min(5000 + i * 30000);
                let _ = img.write_at(&vec![i as u8 + 1; len as usize], off);
                let _ = img.write_zeroes(off / 2, len.min(size - off / 2));
            }
            let _ = img.flush();
        }
        drop(img);
        let _ = vmdk::check(&path, true);
    }
    let _ = std::fs::remove_file(&path);
});
