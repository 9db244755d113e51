//! The pod's network, carried into its VM as Kata does: QEMU runs in the
//! pod's network namespace (made by CNI, with its veth `eth0`), a tap device
//! there is the guest NIC's backend, and two TC ingress filters redirect
//! every frame from eth0 to the tap and back. The guest's interface takes
//! eth0's MAC, addresses, MTU and default route, so the pod keeps the IP
//! CNI gave it and nothing on the host side changes.
//!
//! The namespace's links are set up with iproute2 (`ip`, `tc`) run inside
//! it, from a thread that entered it: that thread's children (the tools,
//! QEMU) are born in the namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use serde_json::Value;

use crate::error::VmError;

/// The tap device made in the pod's namespace.
pub const TAP: &str = "tap0_berth";

/// Where the pod's network is.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The pod's network namespace (a bind mount or /proc/PID/ns/net).
    pub netns: PathBuf,
    /// Its interface to carry into the guest, usually eth0.
    pub interface: String,
}

/// What the guest's interface takes from the pod's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub mac: String,
    /// address/prefix, IPv4 and IPv6 (global scope).
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub gateway6: Option<String>,
    pub mtu: u32,
}

fn failed(what: &str, e: impl std::fmt::Display) -> VmError {
    VmError::Network(format!("{what}: {e}"))
}

/// Runs `f` on a thread of its own inside the namespace `netns`.
pub fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, VmError> + Send,
) -> Result<T, VmError> {
    let ns = File::open(netns).map_err(|e| failed(&format!("opening {}", netns.display()), e))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(|e| failed(&format!("entering {}", netns.display()), e))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(VmError::Network("the namespace thread panicked".into())))
    })
}

/// Runs a tool (in the calling thread's namespace); its stdout.
fn tool(program: &str, args: &[&str]) -> Result<Vec<u8>, VmError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| failed(&format!("running {program}"), e))?;
    if !out.status.success() {
        return Err(VmError::Network(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn json(program: &str, args: &[&str]) -> Result<Value, VmError> {
    let out = tool(program, args)?;
    serde_json::from_slice(&out).map_err(|e| failed(&format!("reading {program}'s JSON"), e))
}

/// Reads the pod interface's settings and redirects its traffic to a new
/// tap device; call inside the namespace.
pub fn attach(interface: &str) -> Result<InterfaceInfo, VmError> {
    let links = json("ip", &["-j", "addr", "show", "dev", interface])?;
    let link = links
        .get(0)
        .ok_or_else(|| VmError::Network(format!("the pod has no interface {interface}")))?;
    let mut info = InterfaceInfo {
        mac: link["address"].as_str().unwrap_or_default().to_owned(),
        mtu: link["mtu"].as_u64().unwrap_or(1500) as u32,
        ..Default::default()
    };
    for a in link["addr_info"].as_array().into_iter().flatten() {
        if a["scope"] == "global" {
            if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                info.addresses.push(format!("{local}/{len}"));
            }
        }
    }
    let gateway = |family: &str| -> Result<Option<String>, VmError> {
        let routes = json(
            "ip",
            &["-j", family, "route", "show", "default", "dev", interface],
        )?;
        Ok(routes
            .get(0)
            .and_then(|r| r["gateway"].as_str())
            .map(str::to_owned))
    };
    info.gateway = gateway("-4")?;
    info.gateway6 = gateway("-6")?;
    let mtu = info.mtu.to_string();
    tool("ip", &["tuntap", "add", "dev", TAP, "mode", "tap"])?;
    let redirected = (|| {
        tool("ip", &["link", "set", "dev", TAP, "mtu", &mtu, "up"])?;
        for (from, to) in [(interface, TAP), (TAP, interface)] {
            tool("tc", &["qdisc", "add", "dev", from, "ingress"])?;
            tool(
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                    "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok(())
    })();
    if let Err(e) = redirected {
        detach(interface);
        return Err(e);
    }
    Ok(info)
}

/// Undoes [`attach`] (whatever of it was done); call inside the namespace.
pub fn detach(interface: &str) {
    let _ = tool("tc", &["qdisc", "del", "dev", interface, "ingress"]);
    let _ = tool("ip", &["link", "del", "dev", TAP]);
}

/// QEMU's arguments for the guest NIC.
pub fn qemu_args(info: &InterfaceInfo) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("tap,id=net0,ifname={TAP},script=no,downscript=no"),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", info.mac),
    ]
}
