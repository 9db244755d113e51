//! The pod's addresses in a CNI result (spec 0.3.0 and later).

use serde_json::Value;

/// The IPs (no prefix length) the result gives the interfaces inside the
/// pod's namespace, IPv4 first as kubelet takes the first as the pod IP.
pub fn pod_ips(result: &Value) -> Vec<String> {
    let interfaces = result["interfaces"].as_array();
    let in_sandbox = |ip: &Value| -> bool {
        let (Some(interfaces), Some(i)) = (interfaces, ip["interface"].as_u64()) else {
            return true;
        };
        interfaces
            .get(i as usize)
            .is_none_or(|itf| itf["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
    };
    let mut ips: Vec<String> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| in_sandbox(ip))
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
        .collect();
    ips.sort_by_key(|ip| ip.contains(':'));
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn sandbox_addresses_ipv4_first() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.4.0.5/16", "gateway": "10.4.0.1", "interface": 2},
                {"address": "10.4.0.1/16", "interface": 0},
            ]
        });
        assert_eq!(super::pod_ips(&r), vec!["10.4.0.5", "fd00::5"]);
        assert_eq!(
            super::pod_ips(&json!({"ips": [{"address": "10.1.2.3/24"}]})),
            vec!["10.1.2.3"]
        );
        assert!(super::pod_ips(&json!({})).is_empty());
    }
}
