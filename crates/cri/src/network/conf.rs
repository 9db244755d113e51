//! CNI network configuration lists, found as containerd finds them: the
//! first `.conflist`, `.conf` or `.json` file by name in the config
//! directory that parses and names a supported spec version.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why there is no configuration list to use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotReady {
    /// The directory holds no candidate file at all.
    #[error("no network config found in {0}")]
    NoConfig(PathBuf),
    /// Candidates exist, and none is usable: each named with its fault.
    #[error("{0}")]
    Broken(String),
    /// The list is usable, and a plugin answered STATUS with an error.
    #[error("{0}")]
    PluginNotReady(String),
}

/// CNI spec versions berth speaks to plugins.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A network configuration list, as loaded (single-plugin `.conf` files
/// become a list of one).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub file: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The list as written to disk, kept with a pod so its DEL runs
    /// against the configuration its ADD used.
    pub raw: Value,
}

impl ConfList {
    /// Parses one file; the error says what is wrong with it.
    pub fn parse(file: &Path, bytes: &[u8]) -> Result<ConfList, String> {
        let raw: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let is_list = file.extension().is_some_and(|e| e == "conflist");
        let (name, version, plugins) = if is_list {
            let plugins = raw["plugins"]
                .as_array()
                .cloned()
                .ok_or("a .conflist needs a \"plugins\" array")?;
            (&raw["name"], &raw["cniVersion"], plugins)
        } else {
            (&raw["name"], &raw["cniVersion"], vec![raw.clone()])
        };
        let name = name
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or("the network has no \"name\"")?
            .to_owned();
        let cni_version = version.as_str().unwrap_or("0.1.0").to_owned();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(format!(
                "cniVersion {cni_version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ));
        }
        if plugins.is_empty() {
            return Err("the list has no plugins".into());
        }
        for (i, p) in plugins.iter().enumerate() {
            let t = p["type"].as_str().unwrap_or_default();
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(format!("plugin {i} has no valid \"type\" ({t:?})"));
            }
        }
        let raw = if is_list {
            raw
        } else {
            serde_json::json!({"cniVersion": cni_version, "name": name, "plugins": plugins})
        };
        Ok(ConfList {
            file: file.to_owned(),
            name,
            cni_version,
            plugins,
            raw,
        })
    }

    /// Whether CHECK may be run on pods of this list: the spec added it in
    /// 0.4.0 and lets a list turn it off with `disableCheck`.
    pub fn has_check(&self) -> bool {
        version_at_least(&self.cni_version, (0, 4, 0))
            && self.raw["disableCheck"].as_bool() != Some(true)
    }

    /// Whether STATUS may be asked of this list's plugins (1.1.0 on).
    pub fn has_status(&self) -> bool {
        version_at_least(&self.cni_version, (1, 1, 0))
    }

    /// The list a pod's record kept.
    pub fn from_record(raw: &Value) -> Result<ConfList, String> {
        ConfList::parse(Path::new("record.conflist"), raw.to_string().as_bytes())
    }
}

fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= min
}

/// The configuration files of `dir` in the order they are tried.
pub fn candidates(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
        })
        .collect();
    files.sort();
    files
}

/// The first usable list in `dir`, or why there is none (every broken
/// file is named).
pub fn load(dir: &Path) -> Result<ConfList, NotReady> {
    let mut problems: Vec<(PathBuf, String)> = Vec::new();
    for file in candidates(dir) {
        match std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| ConfList::parse(&file, &b))
        {
            Ok(list) => {
                for (f, problem) in &problems {
                    tracing::warn!(file = %f.display(), "CNI config skipped: {problem}");
                }
                return Ok(list);
            }
            Err(e) => problems.push((file, e)),
        }
    }
    if problems.is_empty() {
        Err(NotReady::NoConfig(dir.to_owned()))
    } else {
        Err(NotReady::Broken(
            problems
                .iter()
                .map(|(f, e)| format!("{}: {e}", f.display()))
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_single_configs() {
        let list = ConfList::parse(
            Path::new("10-a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 2);
        let single = ConfList::parse(
            Path::new("10-a.conf"),
            br#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(single.plugins.len(), 1);
        assert_eq!(single.raw["plugins"][0]["type"], "bridge");
        for (file, bad, why) in [
            ("a.conflist", &b"{"[..], "JSON"),
            (
                "a.conflist",
                br#"{"cniVersion":"1.0.0","name":"n"}"#,
                "plugins",
            ),
            (
                "a.conflist",
                br#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"x"}]}"#,
                "not supported",
            ),
            (
                "a.conflist",
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "name",
            ),
            (
                "a.conflist",
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "type",
            ),
        ] {
            let e = ConfList::parse(Path::new(file), bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn check_and_status_follow_the_spec_version() {
        let list = |v: &str, extra: &str| {
            ConfList::parse(
                Path::new("a.conflist"),
                format!(r#"{{"cniVersion":"{v}","name":"n"{extra},"plugins":[{{"type":"x"}}]}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        assert!(!list("0.3.1", "").has_check());
        assert!(list("0.4.0", "").has_check());
        assert!(list("1.0.0", "").has_check());
        assert!(!list("1.0.0", r#","disableCheck":true"#).has_check());
        assert!(!list("1.0.0", "").has_status());
        assert!(list("1.1.0", "").has_status());
    }
}
