//! The commands: each one turns its flags into CRI calls and prints the
//! answers the way crictl does.

mod containers;
mod images;
mod pods;
mod runtime;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use k8s_cri::v1 as cri;

use crate::cli::{Cli, Command, ListFormat, StatusFormat};
use crate::client::Clients;
use crate::proto::{self, CriMessage, Json, JsonStyle};

/// Runs the command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let mut c = Clients::new(
        cli.runtime_endpoint,
        cli.image_endpoint,
        cli.timeout,
        cli.debug,
    );
    match cli.command {
        Command::Version => runtime::version(&mut c).await?,
        Command::Info(a) => runtime::info(&mut c, a).await?,
        Command::Runp(a) => pods::runp(&mut c, a).await?,
        Command::Stopp(a) => pods::stopp(&mut c, a).await?,
        Command::Rmp(a) => pods::rmp(&mut c, a).await?,
        Command::Pods(a) => pods::pods(&mut c, a).await?,
        Command::Inspectp(a) => pods::inspectp(&mut c, a).await?,
        Command::Create(a) => containers::create(&mut c, a).await?,
        Command::Start(a) => containers::start(&mut c, a).await?,
        Command::Run(a) => containers::run(&mut c, a).await?,
        Command::Stop(a) => containers::stop(&mut c, a).await?,
        Command::Rm(a) => containers::rm(&mut c, a).await?,
        Command::Ps(a) => containers::ps(&mut c, a).await?,
        Command::Inspect(a) => containers::inspect(&mut c, a).await?,
        Command::Logs(a) => containers::logs(&mut c, a).await?,
        Command::Exec(a) => return containers::exec(&mut c, a).await,
        Command::Attach(a) => return containers::attach(&mut c, a).await,
        Command::PortForward(a) => pods::port_forward(&mut c, a).await?,
        Command::Stats(a) => containers::stats(&mut c, a).await?,
        Command::Statsp(a) => pods::statsp(&mut c, a).await?,
        Command::Update(a) => containers::update(&mut c, a).await?,
        Command::Checkpoint(a) => containers::checkpoint(&mut c, a).await?,
        Command::Pull(a) => images::pull(&mut c, a).await?,
        Command::Images(a) => images::images(&mut c, a).await?,
        Command::Inspecti(a) => images::inspecti(&mut c, a).await?,
        Command::Rmi(a) => images::rmi(&mut c, a).await?,
        Command::Imagefsinfo(a) => images::imagefsinfo(&mut c, a).await?,
        Command::Events(a) => runtime::events(&mut c, a).await?,
        Command::RuntimeConfig => runtime::runtime_config(&mut c).await?,
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// Messages on stderr, logrus style (as crictl prints them).

pub fn warn(msg: impl Display) {
    eprintln!("WARN[0000] {msg}");
}

pub fn info(msg: impl Display) {
    eprintln!("INFO[0000] {msg}");
}

pub fn error(msg: impl Display) {
    eprintln!("ERRO[0000] {msg}");
}

/// Several independent failures (one per id) as one error.
fn aggregate(errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one error")),
        _ => Err(anyhow!(
            "[{}]",
            errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------
// Config files.

fn read_config(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("config at {path} not found")
        } else {
            anyhow!(e).context(format!("read {path}"))
        }
    })
}

fn parse_config<T: CriMessage>(path: &str) -> Result<T> {
    let text = read_config(path)?;
    let (msg, unknown) = proto::parse_message::<T>(&text)?;
    for field in unknown {
        warn(format!("{path}: unknown field {field:?} ignored"));
    }
    Ok(msg)
}

/// A random pod UID, as crictl makes one when the config has none.
fn new_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            format!("{:032x}", nanos ^ ((std::process::id() as u128) << 64))
        })
}

pub fn load_pod_config(path: &str) -> Result<cri::PodSandboxConfig> {
    let mut config: cri::PodSandboxConfig = parse_config(path)?;
    let Some(md) = config.metadata.as_mut() else {
        bail!("metadata is not set");
    };
    if md.uid.is_empty() {
        md.uid = new_uid();
    }
    if md.name.is_empty() || md.namespace.is_empty() {
        bail!("name or namespace is not in metadata {md:?}");
    }
    if config
        .linux
        .as_ref()
        .is_some_and(|l| l.cgroup_parent.is_empty())
    {
        warn("cgroup_parent is not set. Use `runtime-config` to get the runtime cgroup driver");
    }
    Ok(config)
}

pub fn load_container_config(path: &str) -> Result<cri::ContainerConfig> {
    let config: cri::ContainerConfig = parse_config(path)?;
    let Some(md) = config.metadata.as_ref() else {
        bail!("metadata is not set");
    };
    if md.name.is_empty() {
        bail!("name is not in metadata {md:?}");
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// Filters.

pub fn parse_labels(pairs: &[String]) -> Result<HashMap<String, String>> {
    let mut labels = HashMap::new();
    for s in pairs {
        let parts: Vec<&str> = s.split('=').collect();
        if parts.len() != 2 {
            bail!("incorrectly specified label: {s}");
        }
        labels.insert(parts[0].to_owned(), parts[1].to_owned());
    }
    Ok(labels)
}

/// crictl's matchesRegex: no pattern matches all; a bad pattern matches
/// nothing.
pub fn matches_regex(pattern: Option<&str>, target: &str) -> bool {
    match pattern {
        None | Some("") => true,
        Some(p) => regex::Regex::new(p).is_ok_and(|re| re.is_match(target)),
    }
}

/// How many of a list, newest first, to show: all, the latest, or the last n.
pub fn limit(len: usize, latest: bool, last: usize) -> usize {
    let mut n = len;
    if latest {
        n = 1;
    }
    if last > 0 {
        n = last;
    }
    n.min(len)
}

// ---------------------------------------------------------------------------
// Output of status calls: crictl's statusData.

/// One status answer: the status as JSON plus the verbose info map.
pub struct StatusData {
    pub status: Option<Json>,
    pub runtime_handlers: Option<Json>,
    pub features: Option<Json>,
    pub info: HashMap<String, String>,
}

impl StatusData {
    pub fn new(status: Json, info: HashMap<String, String>) -> StatusData {
        StatusData {
            status: Some(status),
            runtime_handlers: None,
            features: None,
            info,
        }
    }

    /// `{"status": ..., <info keys>: ...}` with keys sorted, as Go's
    /// encoding of a map orders them. Info values that are JSON objects are
    /// embedded, others are strings without surrounding quotes.
    fn to_json(&self) -> Result<Json> {
        let mut m: BTreeMap<String, Json> = BTreeMap::new();
        if let Some(s) = &self.status {
            m.insert("status".into(), s.clone());
        }
        if let Some(h) = &self.runtime_handlers {
            m.insert("runtimeHandlers".into(), h.clone());
        }
        if let Some(f) = &self.features {
            m.insert("features".into(), f.clone());
        }
        for (k, v) in &self.info {
            let value = if v.starts_with('{') {
                let parsed: serde_json::Value = serde_json::from_str(v)
                    .with_context(|| format!("unmarshal status info JSON of {k:?}"))?;
                Json::from(parsed)
            } else {
                Json::from(v.trim_matches('"'))
            };
            m.insert(k.clone(), value);
        }
        Ok(Json::from(m))
    }
}

/// Prints status answers: one object, or an array of several.
pub fn print_status_data(statuses: &[StatusData], format: StatusFormat) -> Result<()> {
    if statuses.is_empty() {
        return Ok(());
    }
    let mut items = statuses
        .iter()
        .map(StatusData::to_json)
        .collect::<Result<Vec<_>>>()?;
    let value = if items.len() == 1 {
        items.pop().expect("one item")
    } else {
        Json::Array(items)
    };
    match format {
        StatusFormat::Yaml => print!("{}", value.yaml()),
        _ => println!("{}", value.pretty()),
    }
    Ok(())
}

/// Prints a list response for `-o json|yaml`; false for tables.
pub fn print_list<T: CriMessage>(msg: &T, format: ListFormat) -> bool {
    match format {
        ListFormat::Json => {
            println!("{}", proto::to_json(msg, JsonStyle::Full).pretty());
            true
        }
        ListFormat::Yaml => {
            print!("{}", proto::to_json(msg, JsonStyle::Full).yaml());
            true
        }
        ListFormat::Table => false,
    }
}

/// `Labels:` / `Annotations:` blocks of crictl's verbose listings.
fn print_map(title: &str, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    println!("{title}:");
    for (k, v) in crate::output::sorted(map) {
        println!("\t{k} -> {v}");
    }
}

/// Go's `%v` of a map[string]string: `map[k1:v1 k2:v2]`, keys sorted.
fn go_map(map: &HashMap<String, String>) -> String {
    let items: Vec<String> = crate::output::sorted(map)
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    format!("map[{}]", items.join(" "))
}

/// Removes a container's log file and its rotations (`<path>.*`).
fn remove_logs(log_path: &str, id: &str) {
    let path = Path::new(log_path);
    let mut files = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let prefix = format!("{}.", name.to_string_lossy());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                files.push(e.path());
            }
        }
    }
    files.push(path.to_path_buf());
    for f in files {
        if let Err(e) = std::fs::remove_file(&f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                error(format!(
                    "removing log file {} for container {id:?} failed: {e}",
                    f.display()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = parse_labels(&["a=b".into(), "c=".into()]).unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["c"], "");
        assert!(parse_labels(&["a".into()]).is_err());
        assert!(parse_labels(&["a=b=c".into()]).is_err());
    }

    #[test]
    fn regexes_and_limits() {
        assert!(matches_regex(None, "x"));
        assert!(matches_regex(Some("^ng"), "nginx"));
        assert!(!matches_regex(Some("^x"), "nginx"));
        assert!(!matches_regex(Some("("), "nginx"));
        assert_eq!(limit(5, false, 0), 5);
        assert_eq!(limit(5, true, 0), 1);
        assert_eq!(limit(5, false, 2), 2);
        assert_eq!(limit(1, false, 3), 1);
    }

    #[test]
    fn status_data_layout() {
        let status = Json::Object(vec![
            ("id".into(), Json::from("x")),
            ("b".into(), Json::from("1")),
        ]);
        let info: HashMap<String, String> = [
            ("info".to_owned(), r#"{"z":1,"a":{"y":2,"b":3}}"#.to_owned()),
            ("pid".to_owned(), "\"42\"".to_owned()),
        ]
        .into_iter()
        .collect();
        let v = StatusData::new(status, info).to_json().unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"info":{"a":{"b":3,"y":2},"z":1},"pid":"42","status":{"id":"x","b":"1"}}"#
        );
    }

    #[test]
    fn go_map_format() {
        let m: HashMap<String, String> = [
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(go_map(&m), "map[a:1 b:2]");
        assert_eq!(go_map(&HashMap::new()), "map[]");
    }

    fn write_tmp(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("berthctl-cfg-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn pod_configs_are_checked_and_completed() {
        let p = write_tmp("pod.json", r#"{"metadata":{"name":"n","namespace":"ns"}}"#);
        let cfg = load_pod_config(p.to_str().unwrap()).unwrap();
        assert_eq!(cfg.metadata.unwrap().uid.len(), 36, "a UUID is generated");
        std::fs::write(&p, r#"{"metadata":{"name":"n"}}"#).unwrap();
        let err = load_pod_config(p.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("name or namespace"), "{err:#}");
        std::fs::write(&p, r#"{"hostname":"h"}"#).unwrap();
        assert_eq!(
            load_pod_config(p.to_str().unwrap())
                .unwrap_err()
                .to_string(),
            "metadata is not set"
        );
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            load_pod_config(p.to_str().unwrap())
                .unwrap_err()
                .to_string(),
            format!("config at {} not found", p.display())
        );
    }

    #[test]
    fn container_configs_need_a_name() {
        let p = write_tmp(
            "ctr.yaml",
            "metadata:\n  name: c\nimage:\n  image: busybox\n",
        );
        let cfg = load_container_config(p.to_str().unwrap()).unwrap();
        assert_eq!(cfg.image.unwrap().image, "busybox");
        std::fs::write(&p, r#"{"metadata":{"attempt":2}}"#).unwrap();
        assert!(load_container_config(p.to_str().unwrap()).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
