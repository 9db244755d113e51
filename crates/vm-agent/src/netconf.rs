//! The pod's interface in the guest, set over rtnetlink from the agent
//! itself: a process per step (busybox `ip`) cost a VM under emulation
//! about 0.2 s of its boot.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use berth_api::agent::v1 as proto;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::service::AgentError;

fn failed(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Failed(format!("ConfigureNetwork: {what}: {e}"))
}

fn invalid(what: String) -> AgentError {
    AgentError::InvalidArgument(format!("ConfigureNetwork: {what}"))
}

/// "ADDRESS/PREFIX", v4 or v6.
fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), AgentError> {
    let bad = || invalid(format!("{cidr:?} is not ADDRESS/PREFIX"));
    let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((addr, prefix))
}

fn parse_gateway<T: std::str::FromStr>(gateway: &str) -> Result<Option<T>, AgentError> {
    if gateway.is_empty() {
        return Ok(None);
    }
    gateway.parse().map(Some).map_err(|_| {
        invalid(format!(
            "gateway {gateway:?} is not an address of its family"
        ))
    })
}

/// The interface whose MAC is `mac`: its name and index.
fn interface_with_mac(mac: &str) -> Result<(String, u32), AgentError> {
    let entries = std::fs::read_dir("/sys/class/net").map_err(|e| failed("/sys/class/net", e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let address = std::fs::read_to_string(path.join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(mac) {
            let index = std::fs::read_to_string(path.join("ifindex"))
                .ok()
                .and_then(|i| i.trim().parse().ok())
                .ok_or_else(|| failed("reading the interface's index", path.display()))?;
            return Ok((entry.file_name().to_string_lossy().into_owned(), index));
        }
    }
    Err(AgentError::NotFound(format!("an interface with MAC {mac}")))
}

/// An answer of "already so" is success: the request is idempotent.
fn done(result: Result<(), rtnetlink::Error>, what: &str) -> Result<(), AgentError> {
    match result {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -rustix::io::Errno::EXIST.raw_os_error() =>
        {
            Ok(())
        }
        r => r.map_err(|e| failed(what, e)),
    }
}

/// Sets the interface with the pod's MAC up with the pod's MTU, addresses
/// and default routes.
pub async fn configure(r: &proto::InterfaceConfig) -> Result<(), AgentError> {
    // Everything is checked before anything is changed.
    let addresses = r
        .addresses
        .iter()
        .map(|a| parse_cidr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let gateway: Option<Ipv4Addr> = parse_gateway(&r.gateway)?;
    let gateway6: Option<Ipv6Addr> = parse_gateway(&r.gateway6)?;
    let (name, index) = interface_with_mac(&r.mac)?;
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| failed("opening a netlink socket", e))?;
    let connection = tokio::spawn(connection);
    let result = apply(&handle, index, r.mtu, &addresses, gateway, gateway6)
        .await
        .map_err(|e| match e {
            AgentError::Failed(m) => AgentError::Failed(format!("{m} (interface {name})")),
            other => other,
        });
    connection.abort();
    result
}

async fn apply(
    handle: &Handle,
    index: u32,
    mtu: u32,
    addresses: &[(IpAddr, u8)],
    gateway: Option<Ipv4Addr>,
    gateway6: Option<Ipv6Addr>,
) -> Result<(), AgentError> {
    let mut link = LinkUnspec::new_with_index(index).up();
    if mtu > 0 {
        link = link.mtu(mtu);
    }
    done(
        handle.link().set(link.build()).execute().await,
        "setting the link up",
    )?;
    for (addr, prefix) in addresses {
        done(
            handle.address().add(index, *addr, *prefix).execute().await,
            &format!("adding {addr}/{prefix}"),
        )?;
    }
    let default_routes = [
        gateway.map(|gw| {
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw);
            (route.output_interface(index).build(), gw.to_string())
        }),
        gateway6.map(|gw| {
            let route = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw);
            (route.output_interface(index).build(), gw.to_string())
        }),
    ];
    for (route, gw) in default_routes.into_iter().flatten() {
        done(
            handle.route().add(route).execute().await,
            &format!("the default route via {gw}"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_gateways_are_checked() {
        assert_eq!(
            parse_cidr("10.88.0.5/16").unwrap(),
            ("10.88.0.5".parse().unwrap(), 16)
        );
        assert_eq!(
            parse_cidr("fd00::5/64").unwrap(),
            ("fd00::5".parse().unwrap(), 64)
        );
        for bad in [
            "10.88.0.5",
            "10.88.0.5/33",
            "fd00::5/129",
            "x/8",
            "10.0.0.1/-1",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(parse_gateway::<Ipv4Addr>("fd00::1").is_err());
        assert_eq!(parse_gateway::<Ipv4Addr>("").unwrap(), None);
    }
}
