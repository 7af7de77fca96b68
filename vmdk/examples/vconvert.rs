//! Minimal converter for measuring the library alone: `vconvert raw|SUBFORMAT SRC DST`.

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        eprintln!("usage: vconvert raw|SUBFORMAT SRC DST");
        std::process::exit(2);
    }
    let target = if a[1] == "raw" {
        vmdk::Target::Raw
    } else {
        match a[1].parse() {
            Ok(sf) => vmdk::Target::Vmdk(vmdk::CreateOptions::new(sf, 0)),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        }
    };
    let r =
        vmdk::AnyImage::open(a[2].as_ref(), false).and_then(|src| vmdk::convert(&src, a[3].as_ref(), &target, &|_| {}));
    if let Err(e) = r {
        eprintln!("vconvert: {e}");
        std::process::exit(1);
    }
}
