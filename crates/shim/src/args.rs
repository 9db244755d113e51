//! The shim's command line, as containerd passes it:
//! `-namespace NS -address ADDR -publish-binary BIN -id ID [-bundle DIR] [-debug] [start|delete]`.

use std::path::PathBuf;

use crate::error::{Result, ShimError};

#[derive(Debug, Clone, Default)]
pub struct Args {
    pub namespace: String,
    /// containerd's gRPC address.
    pub address: String,
    pub publish_binary: String,
    pub id: String,
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    /// `start`, `delete`, or none (the daemon itself).
    pub action: Option<String>,
}

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args> {
        let mut a = Args::default();
        let mut i = 0;
        while i < argv.len() {
            let arg = &argv[i];
            let flag = arg.trim_start_matches('-');
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            if !arg.starts_with('-') {
                a.action = Some(arg.clone());
                i += 1;
                continue;
            }
            let mut value = || -> Result<String> {
                if let Some(v) = &inline {
                    return Ok(v.clone());
                }
                i += 1;
                argv.get(i).cloned().ok_or_else(|| {
                    ShimError::InvalidArgument(format!("flag -{name} needs a value"))
                })
            };
            match name {
                "namespace" => a.namespace = value()?,
                "address" => a.address = value()?,
                "publish-binary" => a.publish_binary = value()?,
                "id" => a.id = value()?,
                "bundle" => a.bundle = Some(PathBuf::from(value()?)),
                "debug" => a.debug = inline.as_deref() != Some("false"),
                // Accepted for compatibility with what containerd may pass.
                "socket" | "version" | "v" => {}
                other => return Err(ShimError::InvalidArgument(format!("unknown flag -{other}"))),
            }
            i += 1;
        }
        if a.namespace.is_empty() {
            a.namespace = "default".into();
        }
        Ok(a)
    }

    /// containerd's ttrpc address (where events go).
    pub fn ttrpc_address(&self) -> String {
        std::env::var("TTRPC_ADDRESS").unwrap_or_else(|_| format!("{}.ttrpc", self.address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_style_flags() {
        let argv: Vec<String> = [
            "-namespace",
            "k8s.io",
            "-address",
            "/run/c.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "start",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let a = Args::parse(&argv).unwrap();
        assert_eq!(
            (a.namespace.as_str(), a.id.as_str(), a.action.as_deref()),
            ("k8s.io", "abc", Some("start"))
        );
        assert!(Args::parse(&["-bogus".to_string()]).is_err());
    }
}
