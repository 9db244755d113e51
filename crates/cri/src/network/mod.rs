//! Pod networking through CNI plugins (spec 0.3.0 to 1.1.0): ADD when a
//! pod's network namespace is made, DEL when it is stopped or removed,
//! CHECK of the pods found ready after a restart (0.4.0+), STATUS of the
//! plugins behind the NetworkReady condition (1.1.0+).
//!
//! Before ADD runs, a record of the attachment (the configuration list,
//! the namespace, the arguments) is written under berthd's root, so that
//! a berthd killed mid-ADD still runs DEL for it after a restart and no
//! veth, IP allocation or port mapping is left behind. Host-network pods
//! never reach this module.

mod conf;
mod plugin;
mod result;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::CniConfig;
use crate::error::{Error, Result};
use crate::util;
pub use conf::{ConfList, NotReady};
use plugin::{Command, Invocation};

/// The interface CNI creates inside the pod, as kubelet expects.
const POD_IFNAME: &str = "eth0";

/// What a pod asks of the network.
pub struct Attachment<'a> {
    pub pod_id: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub netns: &'a Path,
    pub port_mappings: &'a [cri::PortMapping],
    pub annotations: &'a std::collections::HashMap<String, String>,
    pub dns: Option<&'a cri::DnsConfig>,
}

/// A pod's attachment, as written before its ADD and completed after.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    pod_id: String,
    netns: PathBuf,
    args: String,
    conflist: Value,
    runtime_config: Value,
    /// The final ADD result, once ADD succeeded.
    result: Option<Value>,
}

/// portmap up to containernetworking-plugins 1.1 (Debian 12's) CHECKs its
/// ip6tables chain whenever ip6tables works, also for a pod with no IPv6
/// address, where ADD made none: every port-mapped pod failed CHECK after
/// a berthd restart and was marked not ready (bench/soak). Later versions
/// skip the family the pod does not have; so does this.
fn portmap_v6_check_bug(e: &Error, result: &Value) -> bool {
    let has_v6 = result["ips"].as_array().is_some_and(|ips| {
        ips.iter()
            .any(|ip| ip["address"].as_str().is_some_and(|a| a.contains(':')))
    });
    !has_v6 && e.to_string().contains("could not check ipv6 dnat")
}

/// The configuration last loaded, and what the directory looked like.
struct Loaded {
    fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>,
    list: std::result::Result<ConfList, NotReady>,
}

/// How long a STATUS answer stands: kubelet asks for the runtime's status
/// every few seconds, and each STATUS is a fork and exec per plugin.
const STATUS_TTL: Duration = Duration::from_secs(5);

/// The last STATUS answer and the list it was asked of.
struct StatusAnswer {
    list: Value,
    at: Instant,
    answer: std::result::Result<(), String>,
}

pub struct Network {
    config: CniConfig,
    records: PathBuf,
    loaded: Mutex<Option<Loaded>>,
    status: tokio::sync::Mutex<Option<StatusAnswer>>,
    /// One plugin list runs at a time: the portmap plugin creates its
    /// top-level iptables chains without a lock, so concurrent first ADDs
    /// fail with "chain already exists".
    serial: tokio::sync::Mutex<()>,
}

impl Network {
    pub fn new(config: CniConfig, records: PathBuf) -> Network {
        Network {
            config,
            records,
            loaded: Mutex::new(None),
            status: tokio::sync::Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration list pods get, or why there is none. The
    /// directory is looked at again on every call (cheaply: only a
    /// changed listing is parsed again), so a configuration written
    /// after berthd started is picked up.
    pub fn config_list(&self) -> std::result::Result<ConfList, NotReady> {
        let fingerprint: Vec<_> = conf::candidates(&self.config.conf_dir)
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).ok();
                let modified = m.as_ref().and_then(|m| m.modified().ok());
                let len = m.map_or(0, |m| m.len());
                (p, modified, len)
            })
            .collect();
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = loaded.as_ref().filter(|l| l.fingerprint == fingerprint) {
            return l.list.clone();
        }
        let list = conf::load(&self.config.conf_dir).and_then(|list| {
            for p in &list.plugins {
                let kind = p["type"].as_str().unwrap_or_default();
                if plugin::find(&self.config.bin_dirs, kind).is_none() {
                    return Err(NotReady::Broken(format!(
                        "{}: plugin {kind:?} is not in {}",
                        list.file.display(),
                        self.config
                            .bin_dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            Ok(list)
        });
        match &list {
            Ok(l) => {
                tracing::info!(file = %l.file.display(), network = %l.name, "CNI config loaded")
            }
            Err(e) => tracing::info!("CNI not ready: {e}"),
        }
        *loaded = Some(Loaded {
            fingerprint,
            list: list.clone(),
        });
        list
    }

    /// The configuration list, once its plugins said they are ready: for
    /// 1.1.0 lists every plugin is asked STATUS (answers are kept a few
    /// seconds); older lists are ready when they load.
    pub async fn ready(&self) -> std::result::Result<ConfList, NotReady> {
        let list = self.config_list()?;
        if !list.has_status() {
            return Ok(list);
        }
        let mut cached = self.status.lock().await;
        if let Some(c) = cached
            .as_ref()
            .filter(|c| c.list == list.raw && c.at.elapsed() < STATUS_TTL)
        {
            return c
                .answer
                .clone()
                .map(|_| list)
                .map_err(NotReady::PluginNotReady);
        }
        let answer = self.plugin_status(&list).await;
        if let Err(e) = &answer {
            tracing::info!(network = %list.name, "CNI STATUS: {e}");
        }
        *cached = Some(StatusAnswer {
            list: list.raw.clone(),
            at: Instant::now(),
            answer: answer.clone(),
        });
        answer.map(|_| list).map_err(NotReady::PluginNotReady)
    }

    async fn plugin_status(&self, list: &ConfList) -> std::result::Result<(), String> {
        let inv = Invocation {
            command: Command::Status,
            container_id: "",
            netns: "",
            ifname: "",
            args: "",
            bin_dirs: &self.config.bin_dirs,
            timeout: Duration::from_secs(self.config.plugin_timeout_seconds.max(1)),
        };
        for p in &list.plugins {
            let input = plugin_input(list, p, &Value::Null, None);
            let kind = p["type"].as_str().unwrap_or_default();
            plugin::run(&inv, kind, &list.name, &input)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// CHECK: whether a pod's attachment is still what its ADD made, asked
    /// of every plugin of the list its ADD used, with the ADD's result.
    /// Pods without an attachment, or whose list predates CHECK or turns
    /// it off, pass.
    pub async fn check(&self, pod_id: &str) -> Result<()> {
        let Some(record) = self.read_record(pod_id) else {
            return Ok(());
        };
        let list = ConfList::from_record(&record.conflist).map_err(|e| {
            Error::Internal(format!("the CNI record of pod {pod_id} is unusable: {e}"))
        })?;
        let Some(result) = record.result.as_ref().filter(|_| list.has_check()) else {
            return Ok(());
        };
        if !record.netns.exists() {
            return Err(Error::FailedPrecondition(format!(
                "the network namespace {} of pod {pod_id} is gone",
                record.netns.display()
            )));
        }
        let netns = record.netns.to_string_lossy();
        let _serial = self.serial.lock().await;
        let inv = self.invocation(Command::Check, &record, &netns);
        for p in &list.plugins {
            let input = plugin_input(&list, p, &record.runtime_config, Some(result));
            let kind = p["type"].as_str().unwrap_or_default();
            match plugin::run(&inv, kind, &list.name, &input).await {
                Err(e) if kind == "portmap" && portmap_v6_check_bug(&e, result) => {
                    tracing::info!(
                        pod = %pod_id,
                        "ignoring portmap's CHECK of IPv6 rules for an IPv4-only pod \
                         (a bug of plugins before 1.2): {e}"
                    );
                }
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// ADD: attaches the pod's namespace to the network; its IPs. With no
    /// configuration at all the pod keeps a loopback-only namespace (the
    /// NetworkReady condition tells kubelet so) and gets no IP; a broken
    /// configuration fails the pod with what is wrong.
    pub async fn attach(&self, a: &Attachment<'_>) -> Result<Vec<String>> {
        let list = match self.config_list() {
            Ok(list) => list,
            Err(e @ NotReady::NoConfig(_)) => {
                tracing::warn!(pod = %a.pod_id, "no pod network, loopback only: {e}");
                return Ok(Vec::new());
            }
            Err(e @ (NotReady::Broken(_) | NotReady::PluginNotReady(_))) => {
                return Err(Error::FailedPrecondition(format!(
                    "the pod network is not usable: {e}"
                )))
            }
        };
        let mut record = Record {
            pod_id: a.pod_id.to_owned(),
            netns: a.netns.to_owned(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                a.namespace, a.name, a.pod_id, a.uid
            ),
            conflist: list.raw.clone(),
            runtime_config: runtime_config(a),
            result: None,
        };
        self.write_record(&record)?;
        match self.add(&list, &record).await {
            Ok(result) => {
                let ips = result::pod_ips(&result);
                record.result = Some(result);
                self.write_record(&record)?;
                Ok(ips)
            }
            Err(e) => {
                if let Err(del) = self.detach(a.pod_id).await {
                    tracing::warn!(pod = %a.pod_id, "undoing a failed CNI ADD: {del}");
                }
                Err(e)
            }
        }
    }

    async fn add(&self, list: &ConfList, record: &Record) -> Result<Value> {
        let _serial = self.serial.lock().await;
        let netns = record.netns.to_string_lossy();
        let inv = self.invocation(Command::Add, record, &netns);
        let mut prev: Option<Value> = None;
        for p in &list.plugins {
            let input = plugin_input(list, p, &record.runtime_config, prev.as_ref());
            let kind = p["type"].as_str().unwrap_or_default();
            prev = Some(plugin::run(&inv, kind, &list.name, &input).await?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL: detaches a pod, with the configuration its ADD used.
    /// Idempotent: a pod without a record has nothing to undo.
    pub async fn detach(&self, pod_id: &str) -> Result<()> {
        let Some(record) = self.read_record(pod_id) else {
            return Ok(());
        };
        let list = ConfList::from_record(&record.conflist).map_err(|e| {
            Error::Internal(format!("the CNI record of pod {pod_id} is unusable: {e}"))
        })?;
        // A namespace already gone is passed as empty, as the spec allows.
        let netns = if record.netns.exists() {
            record.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let _serial = self.serial.lock().await;
        let inv = self.invocation(Command::Del, &record, &netns);
        // From 0.4.0 on, DEL gets the ADD's result as prevResult.
        let prev = record
            .result
            .as_ref()
            .filter(|_| !list.cni_version.starts_with("0.3."));
        for p in list.plugins.iter().rev() {
            let input = plugin_input(&list, p, &record.runtime_config, prev);
            let kind = p["type"].as_str().unwrap_or_default();
            plugin::run(&inv, kind, &list.name, &input).await?;
        }
        let _ = std::fs::remove_file(self.record_path(pod_id));
        Ok(())
    }

    /// Pods with an attachment record (for recovery after a crash).
    pub fn attached_pods(&self) -> Vec<String> {
        std::fs::read_dir(&self.records)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .collect()
    }

    fn invocation<'a>(&'a self, command: Command, r: &'a Record, netns: &'a str) -> Invocation<'a> {
        Invocation {
            command,
            container_id: &r.pod_id,
            netns,
            ifname: POD_IFNAME,
            args: &r.args,
            bin_dirs: &self.config.bin_dirs,
            timeout: Duration::from_secs(self.config.plugin_timeout_seconds.max(1)),
        }
    }

    fn record_path(&self, pod_id: &str) -> PathBuf {
        self.records.join(format!("{pod_id}.json"))
    }

    fn write_record(&self, record: &Record) -> Result<()> {
        util::create_private_dir(&self.records)?;
        let data = serde_json::to_vec(record).map_err(|e| Error::internal("a CNI record", e))?;
        util::write_private_file(&self.record_path(&record.pod_id), &data)
            .map_err(|e| Error::internal("writing a CNI record", e))
    }

    fn read_record(&self, pod_id: &str) -> Option<Record> {
        let data = std::fs::read(self.record_path(pod_id)).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// The config one plugin of the list reads on stdin.
fn plugin_input(
    list: &ConfList,
    plugin: &Value,
    runtime_config: &Value,
    prev: Option<&Value>,
) -> Value {
    let mut input = plugin.clone();
    input["name"] = json!(list.name);
    input["cniVersion"] = json!(list.cni_version);
    if let Some(prev) = prev {
        input["prevResult"] = prev.clone();
    }
    // Capability arguments go only to plugins that declare them.
    let wanted: serde_json::Map<String, Value> = runtime_config
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(cap, _)| plugin["capabilities"][cap.as_str()].as_bool() == Some(true))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !wanted.is_empty() {
        input["runtimeConfig"] = Value::Object(wanted);
    }
    input
}

/// The capability arguments a pod brings (containerd's names): port
/// mappings with a host port, bandwidth from the kubernetes.io
/// annotations, DNS.
fn runtime_config(a: &Attachment<'_>) -> Value {
    let mut rc = serde_json::Map::new();
    let ports: Vec<Value> = a
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": protocol});
            if !p.host_ip.is_empty() {
                m["hostIP"] = json!(p.host_ip);
            }
            m
        })
        .collect();
    if !ports.is_empty() {
        rc.insert("portMappings".into(), Value::Array(ports));
    }
    let mut bandwidth = serde_json::Map::new();
    for (annotation, rate, burst) in [
        (
            "kubernetes.io/ingress-bandwidth",
            "ingressRate",
            "ingressBurst",
        ),
        (
            "kubernetes.io/egress-bandwidth",
            "egressRate",
            "egressBurst",
        ),
    ] {
        if let Some(bits) = a
            .annotations
            .get(annotation)
            .and_then(|q| parse_quantity(q))
        {
            bandwidth.insert(rate.into(), json!(bits));
            // As containerd: a burst large enough never to limit on its own.
            bandwidth.insert(burst.into(), json!(i32::MAX as u64));
        }
    }
    if !bandwidth.is_empty() {
        rc.insert("bandwidth".into(), Value::Object(bandwidth));
    }
    if let Some(dns) = a.dns {
        rc.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    Value::Object(rc)
}

/// A Kubernetes quantity such as `10M` or `1Gi` in units (bits/s here).
fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        _ => return None,
    };
    Some((n * factor) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_go_only_where_declared() {
        let list = ConfList::parse(
            Path::new("a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let annotations = [(
            "kubernetes.io/egress-bandwidth".to_owned(),
            "10M".to_owned(),
        )]
        .into_iter()
        .collect();
        let ports = [
            cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
            cri::PortMapping {
                protocol: 0,
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
            },
        ];
        let a = Attachment {
            pod_id: "p",
            name: "n",
            namespace: "ns",
            uid: "u",
            netns: Path::new("/x"),
            port_mappings: &ports,
            annotations: &annotations,
            dns: None,
        };
        let rc = runtime_config(&a);
        assert_eq!(
            rc["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(rc["bandwidth"]["egressRate"], json!(10_000_000u64));
        let bridge = plugin_input(&list, &list.plugins[0], &rc, None);
        assert!(bridge.get("runtimeConfig").is_none(), "{bridge}");
        assert_eq!(bridge["name"], "n");
        let prev = json!({"ips": []});
        let portmap = plugin_input(&list, &list.plugins[1], &rc, Some(&prev));
        assert_eq!(portmap["runtimeConfig"]["portMappings"], rc["portMappings"]);
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("x"), None);
    }
}
