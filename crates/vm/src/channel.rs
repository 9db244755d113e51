//! The host's end of the channel to the guest's agent. Everywhere: a
//! virtio-serial port, which QEMU serves as a unix socket (one connection
//! at a time, every byte through QEMU's main loop). Under KVM on a host
//! with vhost-vsock: vsock, as Kata and Firecracker use (the kernel carries
//! it, many connections). Under TCG the serial port stays: vhost needs
//! KVM's ioeventfd and irqfd.

use std::hash::{BuildHasher, Hash, Hasher};
use std::path::Path;

use berth_api::agent::v1::{VSOCK_PARAM, VSOCK_PORT};

use crate::qemu::Accel;

/// The device through which the host reaches vhost-vsock.
const VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// The file in the VM's directory that keeps its vsock CID (for a
/// reconnecting owner).
const CID_FILE: &str = "agent.cid";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentChannel {
    /// A virtio-serial port, reached through QEMU's unix socket.
    Serial,
    /// vsock to the guest's context id `cid`, port [`VSOCK_PORT`].
    Vsock { cid: u32 },
}

impl AgentChannel {
    /// vsock under KVM when the host has vhost-vsock, with a fresh random
    /// context id (a clash with another VM's makes QEMU fail the boot,
    /// naming it); virtio-serial otherwise.
    pub fn choose(accel: Accel, dir: &Path) -> AgentChannel {
        Self::choose_with(accel, Path::new(VHOST_VSOCK).exists(), dir)
    }

    fn choose_with(accel: Accel, vhost_vsock: bool, dir: &Path) -> AgentChannel {
        if accel != Accel::Kvm || !vhost_vsock {
            return AgentChannel::Serial;
        }
        // Random per process (std's hasher keys), per VM and per moment.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        dir.hash(&mut h);
        std::time::SystemTime::now().hash(&mut h);
        // 0-2 are the hypervisor's, the local loopback's and the host's;
        // u32::MAX is "any".
        let cid = 3 + (h.finish() % (u64::from(u32::MAX) - 3)) as u32;
        AgentChannel::Vsock { cid }
    }

    /// QEMU's devices for it (`socket`: the serial port's unix socket).
    pub fn qemu_args(&self, socket: &Path) -> Vec<String> {
        match self {
            AgentChannel::Serial => vec![
                "-chardev".into(),
                format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    socket.display()
                ),
                "-device".into(),
                "virtio-serial-device".into(),
                "-device".into(),
                format!(
                    "virtserialport,chardev=agent,name={}",
                    berth_api::agent::v1::PORT_NAME
                ),
            ],
            AgentChannel::Vsock { cid } => vec![
                "-device".into(),
                format!("vhost-vsock-device,guest-cid={cid}"),
            ],
        }
    }

    /// What the guest's kernel command line says of it, and the module
    /// group the agent must load for it.
    pub fn guest_args(&self) -> Option<(&'static str, &'static str)> {
        match self {
            AgentChannel::Serial => None,
            AgentChannel::Vsock { .. } => Some((VSOCK_PARAM, "vsock")),
        }
    }

    /// ttrpc's address of the agent over vsock.
    pub fn vsock_address(cid: u32) -> String {
        format!("vsock://{cid}:{VSOCK_PORT}")
    }

    pub fn record(&self, dir: &Path) -> std::io::Result<()> {
        match self {
            AgentChannel::Serial => Ok(()),
            AgentChannel::Vsock { cid } => std::fs::write(dir.join(CID_FILE), cid.to_string()),
        }
    }

    /// The channel a VM's directory records.
    pub fn recorded(dir: &Path) -> AgentChannel {
        std::fs::read_to_string(dir.join(CID_FILE))
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .map_or(AgentChannel::Serial, |cid| AgentChannel::Vsock { cid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_only_under_kvm_with_vhost_vsock() {
        let dir = Path::new("/run/berth/vm/x");
        assert_eq!(
            AgentChannel::choose_with(Accel::Tcg, true, dir),
            AgentChannel::Serial
        );
        assert_eq!(
            AgentChannel::choose_with(Accel::Kvm, false, dir),
            AgentChannel::Serial
        );
        let AgentChannel::Vsock { cid } = AgentChannel::choose_with(Accel::Kvm, true, dir) else {
            panic!("no vsock under KVM with vhost-vsock");
        };
        assert!((3..u32::MAX).contains(&cid));
        // Each VM its own.
        assert_ne!(
            AgentChannel::choose_with(Accel::Kvm, true, dir),
            AgentChannel::Vsock { cid }
        );
    }

    #[test]
    fn qemu_and_the_guest_are_told_and_the_cid_is_kept() {
        let vsock = AgentChannel::Vsock { cid: 77 };
        assert_eq!(
            vsock.qemu_args(Path::new("/x/agent.sock")),
            ["-device", "vhost-vsock-device,guest-cid=77"]
        );
        assert_eq!(vsock.guest_args(), Some(("berth.channel=vsock", "vsock")));
        assert_eq!(AgentChannel::vsock_address(77), "vsock://77:1024");
        let serial = AgentChannel::Serial.qemu_args(Path::new("/x/agent.sock"));
        assert!(serial.contains(&"virtserialport,chardev=agent,name=berth.agent".to_owned()));
        assert_eq!(AgentChannel::Serial.guest_args(), None);

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(AgentChannel::recorded(dir.path()), AgentChannel::Serial);
        vsock.record(dir.path()).unwrap();
        assert_eq!(AgentChannel::recorded(dir.path()), vsock);
    }
}
