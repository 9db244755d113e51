//! Reading the small text files of procfs, sysfs and cgroupfs.

use std::io::{self, Read};
use std::path::Path;

/// Reads the whole file at `path` as text. These files report a size of 0,
/// so std's `read_to_string` starts with a 32-byte read and grows it (six
/// reads and a statx for a 1 KiB file); this reads into 4 KiB at once, so
/// most files take one read and one at the end.
pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(4096);
    file.read_to_end(&mut buf)?;
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads an open cgroupfs interface file again from its start: one
/// pread(2) at offset 0, after which the kernel produces the file afresh
/// (the file stays open between reads, so no path walk, open or close).
/// A read shorter than the buffer is the whole file: cgroupfs prints each
/// interface file as a single seq_file record, so a short read only comes
/// at its end; a full buffer is grown and read on.
pub fn reread(file: &std::fs::File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = file.read_at(&mut buf[len..], len as u64)?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_small_and_large_kernel_files_whole() {
        let stat = super::read_to_string("/proc/self/stat").unwrap();
        assert!(stat.ends_with('\n') && stat.contains(") "), "{stat}");
        // Larger than the first read: grown as needed.
        let maps = super::read_to_string("/proc/self/maps").unwrap();
        let from_std = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let smaps = super::read_to_string("/proc/self/smaps").unwrap();
        assert!(smaps.len() > 4096 && from_std.len() > 4096);
        assert!(maps.lines().count() > 3);
        assert!(super::read_to_string("/proc/self/no-such-file").is_err());
    }

    #[test]
    fn rereads_an_open_file_from_its_start_whole() {
        let path = std::env::temp_dir().join(format!("berth-reread-{}", std::process::id()));
        std::fs::write(&path, "first\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(super::reread(&file).unwrap(), "first\n");
        assert_eq!(super::reread(&file).unwrap(), "first\n");
        let long = "x".repeat(10_000);
        std::fs::write(&path, &long).unwrap();
        assert_eq!(super::reread(&file).unwrap(), long);
        std::fs::remove_file(&path).unwrap();
    }
}
