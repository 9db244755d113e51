//! Fuzzes layer unpacking and manifest parsing: no input may panic, and no
//! layer may write outside its snapshot directory.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct World {
    base: PathBuf,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("berth-fuzz-layer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("outside")).unwrap();
        // A lower layer with the usual traps: symlinks out, a file to link to.
        let lower = base.join("lower");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(base.join("outside"), lower.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../outside", lower.join("rel")).unwrap();
        World { base }
    })
}

fn check_outside(base: &Path) {
    let count = std::fs::read_dir(base.join("outside"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(count, 0, "a layer wrote outside its snapshot");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((mode, body)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let _ = berth_image::pull::manifest_parts(body);
            let _ = berth_image::pull::select_platform(body, "linux/amd64");
            let _ = berth_image::pull::media_type_of_doc(body);
        }
        _ => {
            let w = world();
            let upper = w.base.join("upper");
            let _ = std::fs::remove_dir_all(&upper);
            std::fs::create_dir_all(&upper).unwrap();
            let compression = match mode % 4 {
                1 => berth_image::unpack::Compression::None,
                2 => berth_image::unpack::Compression::Gzip,
                _ => berth_image::unpack::Compression::Zstd,
            };
            if let Ok(reader) = compression.decoder(body) {
                let _ = berth_image::unpack::apply_layer(
                    reader,
                    "fuzz",
                    &upper,
                    &[w.base.join("lower")],
                );
            }
            check_outside(&w.base);
        }
    }
});
