//! A command-line parser with runc's (urfave/cli and Go flag) conventions:
//! `-flag` and `--flag`, `--flag=value` and `--flag value`, boolean flags
//! with optional `=true|false`, repeated flags, `--` to end flags, and flags
//! accepted after positional arguments unless the command stops at its
//! first positional (runc's `exec`).

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub names: &'static [&'static str],
    pub takes_value: bool,
}

pub const fn flag(names: &'static [&'static str]) -> Flag {
    Flag {
        names,
        takes_value: false,
    }
}

pub const fn opt(names: &'static [&'static str]) -> Flag {
    Flag {
        names,
        takes_value: true,
    }
}

#[derive(Debug, Default)]
pub struct Parsed {
    /// (canonical flag name, value) in order; booleans carry "true"/"false".
    values: Vec<(&'static str, String)>,
    pub positionals: Vec<String>,
}

impl Parsed {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn is_set(&self, name: &str) -> bool {
        matches!(self.get(name), Some(v) if v != "false")
    }
}

/// Parses `args` against `flags`. With `stop_at_positional`, everything from
/// the second positional on is taken verbatim (the command of `exec`).
pub fn parse(args: &[String], flags: &[Flag], stop_at_positional: Option<usize>) -> Result<Parsed> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if let Some(limit) = stop_at_positional {
            if out.positionals.len() >= limit {
                out.positionals.push(arg.clone());
                continue;
            }
        }
        if arg == "--" {
            out.positionals.extend(args[i..].iter().cloned());
            break;
        }
        if arg.len() < 2 || !arg.starts_with('-') {
            out.positionals.push(arg.clone());
            continue;
        }
        let body = arg.strip_prefix("--").unwrap_or(&arg[1..]);
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(spec) = flags.iter().find(|f| f.names.contains(&name)) else {
            bail!("flag provided but not defined: -{name}");
        };
        let canonical = spec.names[0];
        let value = if spec.takes_value {
            match inline {
                Some(v) => v,
                None => {
                    let Some(v) = args.get(i) else {
                        bail!("flag needs an argument: -{name}");
                    };
                    i += 1;
                    v.clone()
                }
            }
        } else {
            match inline.as_deref() {
                None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE")
                | Some("True") => "true".to_owned(),
                Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE")
                | Some("False") => "false".to_owned(),
                Some(other) => bail!("invalid boolean value {other:?} for -{name}"),
            }
        };
        out.values.push((canonical, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        opt(&["bundle", "b"]),
        flag(&["force", "f"]),
        opt(&["env", "e"]),
    ];

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn both_value_forms_and_reordering() {
        let p = parse(&s(&["id", "--bundle=/b", "-f"]), FLAGS, None).unwrap();
        assert_eq!(p.get("bundle"), Some("/b"));
        assert!(p.is_set("force"));
        assert_eq!(p.positionals, vec!["id"]);
        let p = parse(&s(&["-bundle", "/c", "id", "--force=false"]), FLAGS, None).unwrap();
        assert_eq!(p.get("bundle"), Some("/c"));
        assert!(!p.is_set("force"));
    }

    #[test]
    fn repeated_and_stop_at_command() {
        let p = parse(
            &s(&["-e", "A=1", "--env", "B=2", "id", "sh", "-c", "-e"]),
            FLAGS,
            Some(1),
        )
        .unwrap();
        assert_eq!(p.all("env"), vec!["A=1", "B=2"]);
        assert_eq!(p.positionals, vec!["id", "sh", "-c", "-e"]);
    }

    #[test]
    fn errors() {
        assert!(parse(&s(&["--nope"]), FLAGS, None).is_err());
        assert!(parse(&s(&["--bundle"]), FLAGS, None).is_err());
        assert!(parse(&s(&["--force=maybe"]), FLAGS, None).is_err());
        let p = parse(&s(&["--", "-f"]), FLAGS, None).unwrap();
        assert_eq!(p.positionals, vec!["-f"]);
    }
}
