//! Registry credentials from a docker `config.json`: `auths` entries
//! (base64 `auth`, or `username` and `password`) and credential helpers
//! (`credHelpers` per registry, `credsStore` for all), as docker and
//! podman read them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::pull::Auth;
use crate::{Error, Result};

#[derive(Debug, Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "registrytoken")]
    registry_token: Option<String>,
}

/// `https://host/v1/` and `host` both name `host`.
fn normalize(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The names docker files use for a registry.
fn aliases(registry: &str) -> Vec<&str> {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
        }
        other => vec![other],
    }
}

pub fn decode_auth(b64: &str) -> Option<(String, String)> {
    let raw = base64_decode(b64.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Runs `docker-credential-<helper> get` for `server`.
fn from_helper(helper: &str, server: &str) -> Result<Option<Auth>> {
    if helper.contains('/') || helper.is_empty() {
        return Err(Error::Config(format!(
            "credential helper {helper:?}: invalid name"
        )));
    }
    let bin = format!("docker-credential-{helper}");
    let mut child = Command::new(&bin)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Config(format!("running {bin}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Config(format!("running {bin}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // The helpers' protocol: "credentials not found in native keychain".
        if msg.contains("not found") {
            return Ok(None);
        }
        return Err(Error::Config(format!(
            "{bin} get {server}: {msg} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let r: Reply = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Config(format!("{bin} get {server}: unreadable reply: {e}")))?;
    if r.username == "<token>" {
        return Err(Error::Config(format!(
            "{bin} returned an identity token for {server}; OAuth identity tokens are not supported"
        )));
    }
    Ok(Some(Auth::Basic {
        username: r.username,
        password: r.secret,
    }))
}

/// Credentials for `registry` from the docker config at `path` (None if
/// the file or an entry for the registry is absent).
pub fn lookup(path: &Path, registry: &str) -> Result<Option<Auth>> {
    let raw = match std::fs::read(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
    };
    let config: DockerConfig = serde_json::from_slice(&raw)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let names = aliases(registry);
    for (key, helper) in &config.cred_helpers {
        if names.contains(&normalize(key)) {
            return from_helper(helper, key);
        }
    }
    for (key, entry) in &config.auths {
        if !names.contains(&normalize(key)) {
            continue;
        }
        if let Some(t) = entry.registry_token.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Auth::Bearer(t.to_owned())));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            if !u.is_empty() {
                return Ok(Some(Auth::Basic {
                    username: u.clone(),
                    password: p.clone(),
                }));
            }
        }
        if let Some(a) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let (username, password) = decode_auth(a).ok_or_else(|| {
                Error::Config(format!(
                    "{}: auths.{key}.auth is not base64 of user:password",
                    path.display()
                ))
            })?;
            return Ok(Some(Auth::Basic { username, password }));
        }
    }
    if let Some(store) = &config.creds_store {
        let server = if registry == "docker.io" {
            "https://index.docker.io/v1/"
        } else {
            registry
        };
        return from_helper(store, server);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_entries() {
        let dir = std::env::temp_dir().join(format!("berth-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
                "127.0.0.1:5000": {"username": "u", "password": "p"},
                "bad.io": {"auth": "***"}
            }}"#,
        )
        .unwrap();
        let basic = |u: &str, p: &str| Some((u.to_owned(), p.to_owned()));
        let get = |r: &str| match lookup(&path, r).unwrap() {
            Some(Auth::Basic { username, password }) => Some((username, password)),
            _ => None,
        };
        assert_eq!(get("docker.io"), basic("user", "pass"));
        assert_eq!(get("127.0.0.1:5000"), basic("u", "p"));
        assert_eq!(get("quay.io"), None);
        assert!(lookup(&path, "bad.io").is_err());
        assert!(lookup(&dir.join("none.json"), "docker.io")
            .unwrap()
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
