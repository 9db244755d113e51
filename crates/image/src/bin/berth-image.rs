//! berth-image: the image store from the command line (pull, list, inspect,
//! rm, import, export, usage), for operators and benchmarks. berthd serves
//! the same store over CRI.

use std::path::PathBuf;
use std::sync::Arc;

use berth_image::{Auth, ImageStore, PullOptions, StoreOptions};

const USAGE: &str =
    "usage: berth-image [--root DIR] [--insecure REGISTRY]... [--platform os/arch] [--parallel N]
                   [--hosts-dir DIR] [--docker-config FILE] COMMAND
commands:
  pull REF [--user USER:PASSWORD]   pull (and unpack) an image
  list                              list images (JSON)
  inspect REF|ID                    image status (JSON; null when absent)
  rm REF|ID                         remove an image and what only it used
  import PATH [NAME]                import an OCI layout (dir or .tar) or docker-save archive
  export PATH REF...                write an OCI layout (dir, or .tar)
  usage                             bytes and inodes used";

fn main() {
    if let Err(e) = run() {
        eprintln!("berth-image: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = StoreOptions::default();
    let mut root = PathBuf::from("/var/lib/berth/images");
    let mut user = None;
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| {
            args.get(i + 1)
                .cloned()
                .ok_or_else(|| format!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "--root" => root = PathBuf::from(value(i)?),
            "--insecure" => options.insecure_registries.push(value(i)?),
            "--platform" => options.platform = value(i)?,
            "--parallel" => options.max_concurrent_downloads = value(i)?.parse()?,
            "--user" => user = Some(value(i)?),
            "--hosts-dir" => options.hosts_dir = Some(PathBuf::from(value(i)?)),
            "--docker-config" => options.docker_config = Some(PathBuf::from(value(i)?)),
            _ => {
                i += 1;
                continue;
            }
        }
        args.drain(i..i + 2);
    }
    let Some((command, rest)) = args.split_first() else {
        return Err(USAGE.into());
    };
    let store = Arc::new(ImageStore::open(&root, options)?);
    let print =
        |v: serde_json::Value| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    match (command.as_str(), rest) {
        ("pull", [reference]) => {
            let auth = match user.as_deref().and_then(|u| u.split_once(':')) {
                Some((u, p)) => Auth::Basic {
                    username: u.into(),
                    password: p.into(),
                },
                None => Auth::Anonymous,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let image = runtime.block_on(store.pull(
                reference,
                &PullOptions {
                    auth,
                    ..Default::default()
                },
            ))?;
            print(serde_json::to_value(image)?);
        }
        ("list", []) => print(serde_json::to_value(store.list()?)?),
        ("inspect", [r]) => print(serde_json::to_value(store.status(r)?)?),
        ("rm", [r]) => store.remove(r)?,
        ("import", [path, rest @ ..]) => {
            let path = PathBuf::from(path);
            let is_docker = !path.is_dir() && tar_has(&path, "manifest.json")?;
            let images = if is_docker {
                store.import_docker_archive(&path)?
            } else {
                store.import_layout(&path, rest.first().map(String::as_str))?
            };
            print(serde_json::to_value(images)?);
        }
        ("export", [path, refs @ ..]) if !refs.is_empty() => {
            let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
            store.export_layout(&refs, &PathBuf::from(path))?;
        }
        ("usage", []) => print(serde_json::to_value(store.fs_usage()?)?),
        _ => return Err(USAGE.into()),
    }
    Ok(())
}

/// Whether a tar archive has a top-level file `name`.
fn tar_has(path: &std::path::Path, name: &str) -> std::io::Result<bool> {
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    for entry in archive.entries()? {
        let entry = entry?;
        let p = entry.path()?.into_owned();
        if p.to_str().map(|s| s.trim_start_matches("./")) == Some(name) {
            return Ok(true);
        }
    }
    Ok(false)
}
