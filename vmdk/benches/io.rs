//! Criterion benches of the block API: sequential and random I/O on a monolithicSparse image,
//! sequential reads of a streamOptimized image. Run: `cargo bench -p vmdk --bench io`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::path::PathBuf;
use vmdk::{CreateOptions, Image, Subformat};

const SIZE: u64 = 256 << 20;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    let p = std::env::temp_dir().join(format!("vmdk-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

/// xorshift64 offsets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn filled(d: &Dir, name: &str) -> PathBuf {
    let p = d.0.join(name);
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, SIZE)).unwrap();
    let img = Image::open_rw(&p).unwrap();
    let mut b = vec![0u8; 1 << 20];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i * 31 % 251) as u8;
    }
    for off in (0..SIZE).step_by(1 << 20) {
        img.write_at(&b, off).unwrap();
    }
    img.flush().unwrap();
    p
}

fn bench_io(c: &mut Criterion) {
    let d = dir();
    let full = filled(&d, "full.vmdk");
    let mut g = c.benchmark_group("sparse");
    g.sample_size(10);
    for bs in [4096usize, 65536, 1 << 20] {
        g.throughput(Throughput::Bytes(SIZE));
        g.bench_with_input(BenchmarkId::new("seq_read", bs), &bs, |b, &bs| {
            let img = Image::open(&full).unwrap();
            let mut buf = vec![0u8; bs];
            b.iter(|| {
                for off in (0..SIZE).step_by(bs) {
                    img.read_at(&mut buf, off).unwrap();
                }
                black_box(&buf);
            })
        });
    }
    g.throughput(Throughput::Bytes(SIZE));
    g.bench_function("seq_write_alloc_1M", |b| {
        let buf = vec![0x5Au8; 1 << 20];
        let mut n = 0;
        b.iter(|| {
            n += 1;
            let p = d.0.join(format!("w{n}.vmdk"));
            vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, SIZE)).unwrap();
            let img = Image::open_rw(&p).unwrap();
            for off in (0..SIZE).step_by(1 << 20) {
                img.write_at(&buf, off).unwrap();
            }
            img.flush().unwrap();
            drop(img);
            std::fs::remove_file(&p).unwrap();
        })
    });
    const N: u64 = 4096;
    g.throughput(Throughput::Bytes(N * 4096));
    g.bench_function("random_read_4k", |b| {
        let img = Image::open(&full).unwrap();
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut buf = vec![0u8; 4096];
        b.iter(|| {
            for _ in 0..N {
                let off = r.next() % (SIZE - 4096);
                img.read_at(&mut buf, off).unwrap();
            }
        })
    });
    g.bench_function("random_write_4k_allocated", |b| {
        let img = Image::open_rw(&full).unwrap();
        let mut r = Rng(12345);
        let buf = vec![0xA5u8; 4096];
        b.iter(|| {
            for _ in 0..N {
                let off = r.next() % (SIZE - 4096) / 512 * 512;
                img.write_at(&buf, off).unwrap();
            }
        })
    });
    g.bench_function("random_write_4k_unallocated", |b| {
        let mut n = 0;
        let buf = vec![0xA5u8; 4096];
        b.iter(|| {
            n += 1;
            let p = d.0.join(format!("r{n}.vmdk"));
            vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, SIZE)).unwrap();
            let img = Image::open_rw(&p).unwrap();
            let mut r = Rng(777 + n);
            for _ in 0..N {
                let off = r.next() % (SIZE - 4096);
                img.write_at(&buf, off).unwrap();
            }
            drop(img);
            std::fs::remove_file(&p).unwrap();
        })
    });
    g.finish();

    // streamOptimized sequential read (decompression).
    let so = d.0.join("s.vmdk");
    let src = vmdk::AnyImage::open(&full, false).unwrap();
    vmdk::convert(&src, &so, &vmdk::Target::Vmdk(CreateOptions::new(Subformat::StreamOptimized, 0)), &|_| {}).unwrap();
    let mut g = c.benchmark_group("stream");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE));
    g.bench_function("seq_read_64k", |b| {
        let img = Image::open(&so).unwrap();
        let mut buf = vec![0u8; 65536];
        b.iter(|| {
            for off in (0..SIZE).step_by(65536) {
                img.read_at(&mut buf, off).unwrap();
            }
        })
    });
    g.bench_function("convert_to_stream", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            let p = d.0.join(format!("c{n}.vmdk"));
            let t = vmdk::Target::Vmdk(CreateOptions::new(Subformat::StreamOptimized, 0));
            vmdk::convert(&src, &p, &t, &|_| {}).unwrap();
            std::fs::remove_file(&p).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench_io);
criterion_main!(benches);
