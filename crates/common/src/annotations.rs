//! Annotations berth's layers pass to each other in a config.json.

/// Set by a CRI daemon that mounted the bundle's rootfs nosuid only to
/// keep host users from its setuid binaries (containerd CVE-2021-41103
/// class): the runtime clears nosuid on the container's own view.
pub const ROOTFS_HOST_NOSUID: &str = "io.github.berth.rootfs.host-nosuid";
