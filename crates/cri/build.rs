//! Builds berth-pause, the PID-namespace holder of pods that share one: a
//! static executable without libc, small enough to embed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause/pause.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("berth-pause");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-Os",
            "-static",
            "-nostdlib",
            "-nostartfiles",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-Wl,--build-id=none",
            "-s",
            "-o",
        ])
        .arg(&out)
        .arg("pause/pause.c")
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build berth-pause: {e}"));
    assert!(status.success(), "{cc} failed to build berth-pause");
}
