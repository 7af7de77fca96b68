//! Fuzzes a whole monolithic image: the bytes become a file that is opened, read, mapped and checked.
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
    let _ = std::fs::remove_file(&path);
});
