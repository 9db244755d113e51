//! The CRI v1 messages as data: reading pod and container configs (JSON or
//! YAML, any subset of fields) into the k8s-cri types, and printing
//! responses as protobuf JSON, the way crictl does.
//!
//! Both go through a reflection of the API (`proto/api.proto`, compiled
//! into a descriptor set by build.rs): a config is deserialized into a
//! `prost_reflect::DynamicMessage` (proto or JSON field names, missing
//! fields default, enums as numbers or names), encoded, and decoded with
//! prost into the generated type; a response goes the other way.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use k8s_cri::v1 as cri;

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor.bin"));

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET).expect("the CRI descriptor set built by build.rs")
    })
}

/// A generated CRI message with its full protobuf name.
pub trait CriMessage: Message + Default {
    const NAME: &'static str;

    fn descriptor() -> MessageDescriptor {
        pool()
            .get_message_by_name(Self::NAME)
            .unwrap_or_else(|| panic!("{} is not in proto/api.proto", Self::NAME))
    }
}

macro_rules! cri_messages {
    ($($ty:ident),* $(,)?) => {
        $(impl CriMessage for cri::$ty {
            const NAME: &'static str = concat!("runtime.v1.", stringify!($ty));
        })*
    };
}

cri_messages!(
    PodSandboxConfig,
    ContainerConfig,
    PodSandboxStatus,
    ContainerStatus,
    Image,
    ListPodSandboxResponse,
    ListContainersResponse,
    ListImagesResponse,
    ListContainerStatsResponse,
    ListPodSandboxStatsResponse,
    ImageFsInfoResponse,
    RuntimeStatus,
    RuntimeHandler,
    RuntimeFeatures,
    ContainerEventResponse,
    RuntimeConfigResponse,
    VersionResponse,
);

// ---------------------------------------------------------------------------
// Reading configs.

/// Parses `text` (JSON, or YAML when it is not JSON) into message `T`.
/// Unknown fields are ignored, as crictl does, and each one is returned as
/// a dotted path so the caller can warn about it.
pub fn parse_message<T: CriMessage>(text: &str) -> Result<(T, Vec<String>)> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('{') || trimmed.starts_with('[') {
                return Err(anyhow!(json_err).context("invalid JSON"));
            }
            serde_yaml::from_str(text).context("invalid YAML")?
        }
    };
    if !value.is_object() {
        bail!("expected a {} object", short_name(T::NAME));
    }
    let desc = T::descriptor();
    let mut unknown = Vec::new();
    let mut bad_enums = Vec::new();
    check_fields(&desc, &value, "", &mut unknown, &mut bad_enums);
    if let Some(bad) = bad_enums.first() {
        bail!("{bad}");
    }
    let mut track = serde_path_to_error::Track::new();
    let dynamic = DynamicMessage::deserialize_with_options(
        desc,
        serde_path_to_error::Deserializer::new(&value, &mut track),
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .map_err(|e| {
        let path = track.path().to_string();
        if path.is_empty() || path == "." {
            anyhow!("{e}")
        } else {
            anyhow!("{path}: {e}")
        }
    })?;
    let msg = T::decode(dynamic.encode_to_vec().as_slice())
        .with_context(|| format!("converting to {}", T::NAME))?;
    Ok((msg, unknown))
}

fn short_name(full: &str) -> &str {
    full.rsplit('.').next().unwrap_or(full)
}

/// Walks `value` along `desc`: collects the keys that are no field (to
/// warn about: crictl ignores them) and enum values given by a name the
/// enum does not have (errors: the reflection would silently take 0).
fn check_fields(
    desc: &MessageDescriptor,
    value: &serde_json::Value,
    at: &str,
    unknown: &mut Vec<String>,
    bad_enums: &mut Vec<String>,
) {
    let Some(obj) = value.as_object() else {
        return;
    };
    for (key, v) in obj {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key));
        let Some(field) = field else {
            unknown.push(path);
            continue;
        };
        let kind = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let kind = entry.map_entry_value_field().kind();
            for (k, item) in v.as_object().into_iter().flatten() {
                check_value(&kind, item, &format!("{path}.{k}"), unknown, bad_enums);
            }
            continue;
        } else {
            field.kind()
        };
        match v {
            serde_json::Value::Array(items) if field.is_list() => {
                for (i, item) in items.iter().enumerate() {
                    check_value(&kind, item, &format!("{path}[{i}]"), unknown, bad_enums);
                }
            }
            _ => check_value(&kind, v, &path, unknown, bad_enums),
        }
    }
}

fn check_value(
    kind: &Kind,
    value: &serde_json::Value,
    path: &str,
    unknown: &mut Vec<String>,
    bad_enums: &mut Vec<String>,
) {
    match (kind, value) {
        (Kind::Message(m), _) => check_fields(m, value, path, unknown, bad_enums),
        (Kind::Enum(e), serde_json::Value::String(name)) if e.get_value_by_name(name).is_none() => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            bad_enums.push(format!(
                "{path}: unknown value {name:?} of {} (one of {}, or a number)",
                e.name(),
                names.join(", ")
            ));
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Printing messages.

/// How a message is turned into JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonStyle {
    /// protojson with every field (crictl's `-o json`): lowerCamelCase
    /// names, enum names, 64-bit integers as strings, defaults included.
    Full,
    /// Set fields only, with proto (snake_case) names, plain numbers and
    /// enum numbers:
    /// what Go's encoding/json makes of the generated structs, which
    /// crictl prints for runtime handlers and features.
    Compact,
}

/// `msg` as ordered JSON (fields in the order of the .proto file).
pub fn to_json<T: CriMessage>(msg: &T, style: JsonStyle) -> Json {
    let dynamic = DynamicMessage::decode(T::descriptor(), msg.encode_to_vec().as_slice())
        .expect("a message prost encoded decodes with its own descriptor");
    let options = match style {
        JsonStyle::Full => SerializeOptions::new().skip_default_fields(false),
        JsonStyle::Compact => SerializeOptions::new()
            .use_proto_field_name(true)
            .use_enum_numbers(true)
            .stringify_64_bit_integers(false),
    };
    let text = {
        let mut buf = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut buf);
        dynamic
            .serialize_with_options(&mut ser, &options)
            .expect("serializing a message to JSON");
        buf
    };
    serde_json::from_slice(&text).expect("the JSON just written")
}

/// A JSON value that keeps the order of object keys (serde_json's own Map
/// sorts them unless a crate-wide feature is turned on).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn object() -> Json {
        Json::Object(Vec::new())
    }

    /// Sets `key` (replacing its value in place, or appending it).
    pub fn set(&mut self, key: &str, value: Json) {
        if let Json::Object(fields) = self {
            if let Some(slot) = fields.iter_mut().find(|(k, _)| k == key) {
                slot.1 = value;
            } else {
                fields.push((key.to_owned(), value));
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// Pretty JSON with two-space indentation (crictl's layout).
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("JSON serialization")
    }

    pub fn yaml(&self) -> String {
        serde_yaml::to_string(self).expect("YAML serialization")
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Json {
        match v {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(b),
            serde_json::Value::Number(n) => Json::Number(n),
            serde_json::Value::String(s) => Json::String(s),
            serde_json::Value::Array(a) => Json::Array(a.into_iter().map(Json::from).collect()),
            serde_json::Value::Object(o) => {
                Json::Object(o.into_iter().map(|(k, v)| (k, Json::from(v))).collect())
            }
        }
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::String(s.to_owned())
    }
}

impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::String(s)
    }
}

impl From<BTreeMap<String, Json>> for Json {
    fn from(m: BTreeMap<String, Json>) -> Json {
        Json::Object(m.into_iter().collect())
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    fields.push((k, v));
                }
                Ok(Json::Object(fields))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_config_with_partial_fields_nested_messages_and_enum_numbers() {
        let text = r#"{
            "metadata": {"name": "nginx", "namespace": "default", "uid": "abc", "attempt": 1},
            "log_directory": "/tmp/logs",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"a.b/c": "d"},
            "dns_config": {"servers": ["1.1.1.1", "8.8.8.8"], "searches": ["example.com"]},
            "port_mappings": [{"protocol": 1, "container_port": 80, "host_port": 8080}],
            "linux": {
                "cgroup_parent": "/berth-test",
                "sysctls": {"net.ipv4.ip_forward": "1"},
                "security_context": {"namespace_options": {"network": 2, "pid": "POD"}}
            }
        }"#;
        let (cfg, unknown) = parse_message::<cri::PodSandboxConfig>(text).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        let md = cfg.metadata.as_ref().unwrap();
        assert_eq!(
            (
                md.name.as_str(),
                md.namespace.as_str(),
                md.uid.as_str(),
                md.attempt
            ),
            ("nginx", "default", "abc", 1)
        );
        assert_eq!(cfg.log_directory, "/tmp/logs");
        assert_eq!(cfg.labels.len(), 2);
        assert_eq!(cfg.labels["tier"], "front");
        assert_eq!(cfg.annotations["a.b/c"], "d");
        let dns = cfg.dns_config.as_ref().unwrap();
        assert_eq!(dns.servers, vec!["1.1.1.1", "8.8.8.8"]);
        assert_eq!(dns.searches, vec!["example.com"]);
        assert_eq!(cfg.port_mappings.len(), 1);
        assert_eq!(cfg.port_mappings[0].protocol, cri::Protocol::Udp as i32);
        assert_eq!(cfg.port_mappings[0].host_port, 8080);
        let linux = cfg.linux.as_ref().unwrap();
        assert_eq!(linux.cgroup_parent, "/berth-test");
        assert_eq!(linux.sysctls["net.ipv4.ip_forward"], "1");
        let ns = linux
            .security_context
            .as_ref()
            .unwrap()
            .namespace_options
            .as_ref()
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Pod as i32);
        assert_eq!(
            ns.ipc,
            cri::NamespaceMode::Pod as i32,
            "missing fields default"
        );
        assert!(cfg.hostname.is_empty());
    }

    #[test]
    fn container_config_repeated_messages_and_camel_case_names() {
        let text = r#"{
            "metadata": {"name": "c1"},
            "image": {"image": "busybox:latest"},
            "command": ["sh", "-c"],
            "args": ["echo hi"],
            "envs": [{"key": "A", "value": "1"}, {"key": "B", "value": "2"}],
            "mounts": [{"containerPath": "/data", "host_path": "/tmp/d", "readonly": true, "propagation": 2}],
            "log_path": "c1.log",
            "stdin": false,
            "linux": {"resources": {"memory_limit_in_bytes": "104857600", "cpu_shares": 512},
                      "security_context": {"run_as_user": {"value": 0}, "privileged": true}}
        }"#;
        let (cfg, unknown) = parse_message::<cri::ContainerConfig>(text).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(cfg.metadata.unwrap().name, "c1");
        assert_eq!(cfg.image.unwrap().image, "busybox:latest");
        assert_eq!(cfg.command, vec!["sh", "-c"]);
        assert_eq!(cfg.envs.len(), 2);
        assert_eq!(
            (cfg.envs[1].key.as_str(), cfg.envs[1].value.as_str()),
            ("B", "2")
        );
        assert_eq!(cfg.mounts[0].container_path, "/data");
        assert!(cfg.mounts[0].readonly);
        assert_eq!(
            cfg.mounts[0].propagation,
            cri::MountPropagation::PropagationBidirectional as i32
        );
        let linux = cfg.linux.unwrap();
        let res = linux.resources.unwrap();
        assert_eq!(res.memory_limit_in_bytes, 104_857_600);
        assert_eq!(res.cpu_shares, 512);
        let sc = linux.security_context.unwrap();
        assert!(sc.privileged);
        assert_eq!(sc.run_as_user.unwrap().value, 0);
    }

    #[test]
    fn yaml_configs_and_enum_names() {
        let text = "metadata:\n  name: y\n  namespace: ns\nlinux:\n  security_context:\n    namespace_options:\n      network: NODE\nlabels:\n  k: v\n";
        let (cfg, _) = parse_message::<cri::PodSandboxConfig>(text).unwrap();
        assert_eq!(cfg.metadata.unwrap().name, "y");
        assert_eq!(cfg.labels["k"], "v");
        let ns = cfg
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    }

    #[test]
    fn unknown_fields_are_reported_not_fatal() {
        let text = r#"{"metadata": {"name": "x", "nmespace": "typo"}, "bogus": 1,
                       "linux": {"security_context": {"namespace_options": {"netwrk": 2}}},
                       "port_mappings": [{"hostport": 1}]}"#;
        let (cfg, unknown) = parse_message::<cri::PodSandboxConfig>(text).unwrap();
        assert_eq!(cfg.metadata.unwrap().name, "x");
        let mut unknown = unknown;
        unknown.sort();
        assert_eq!(
            unknown,
            vec![
                "bogus",
                "linux.security_context.namespace_options.netwrk",
                "metadata.nmespace",
                "port_mappings[0].hostport"
            ]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let err = parse_message::<cri::PodSandboxConfig>(r#"{"metadata": {"attempt": "x"}}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata.attempt: invalid digit found in string"
        );
        let err = parse_message::<cri::ContainerConfig>(r#"{"envs": [{"key": "A"}, {"key": 5}]}"#)
            .unwrap_err();
        assert!(err.to_string().starts_with("envs[1].key: "), "{err:#}");
        assert!(parse_message::<cri::PodSandboxConfig>("{ not json").is_err());
        assert!(parse_message::<cri::PodSandboxConfig>("[1, 2]").is_err());
        let err = parse_message::<cri::PodSandboxConfig>(
            r#"{"linux": {"security_context": {"namespace_options": {"network": "NOPE"}}}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("linux.security_context.namespace_options.network: unknown value \"NOPE\" of NamespaceMode"),
            "{err:#}"
        );
        let err =
            parse_message::<cri::ContainerConfig>(r#"{"mounts": [{"propagation": "SIDEWAYS"}]}"#)
                .unwrap_err();
        assert!(
            err.to_string().starts_with("mounts[0].propagation"),
            "{err:#}"
        );
    }

    #[test]
    fn protojson_output_keeps_proto_order_and_names() {
        let status = cri::ContainerStatus {
            id: "abc".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            state: cri::ContainerState::ContainerRunning as i32,
            created_at: 1_700_000_000_000_000_000,
            log_path: "/tmp/x.log".into(),
            labels: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
            ..Default::default()
        };
        let json = to_json(&status, JsonStyle::Full);
        let Json::Object(fields) = &json else {
            panic!("not an object")
        };
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(&keys[..4], &["id", "metadata", "state", "createdAt"]);
        assert_eq!(
            json.get("state").unwrap().as_str(),
            Some("CONTAINER_RUNNING")
        );
        assert_eq!(
            json.get("createdAt").unwrap().as_str(),
            Some("1700000000000000000")
        );
        assert_eq!(json.get("logPath").unwrap().as_str(), Some("/tmp/x.log"));
        // Defaults are emitted, as crictl's EmitDefaultValues does.
        assert_eq!(json.get("exitCode"), Some(&Json::Number(0.into())));
        let text = json.pretty();
        assert!(
            text.starts_with("{\n  \"id\": \"abc\",\n  \"metadata\": {"),
            "{text}"
        );

        let compact = to_json(&status, JsonStyle::Compact);
        assert!(compact.get("log_path").is_some());
        assert!(compact.get("exit_code").is_none());
        assert_eq!(compact.get("state"), Some(&Json::Number(1.into())));
    }

    #[test]
    fn json_round_trips_through_the_ordered_value() {
        let text = r#"{"b":1,"a":[true,null,"x",{"z":1.5,"y":-2}]}"#;
        let v: Json = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
    }
}
