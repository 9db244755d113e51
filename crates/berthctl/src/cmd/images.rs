//! pull, images, inspecti, rmi, imagefsinfo.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;

use super::{
    aggregate, go_map, info, load_pod_config, parse_labels, print_list, print_status_data,
    StatusData,
};
use crate::cli::{ImagefsinfoArgs, ImagesArgs, InspectiArgs, PullArgs, RmiArgs, StatusFormat};
use crate::client::Clients;
use crate::output::{human_size, human_size_with_precision, truncate_id, Table};
use crate::progress::{while_pulling, ProgressMode};
use crate::proto::{to_json, JsonStyle};

/// The registry credentials of `--creds USER[:PASS]` or `--auth BASE64`.
pub fn auth_config(creds: Option<&str>, auth: Option<&str>) -> Result<Option<cri::AuthConfig>> {
    let creds = creds.filter(|s| !s.is_empty());
    let auth = auth.filter(|s| !s.is_empty());
    if creds.is_some() && auth.is_some() {
        bail!("both `--creds` and `--auth` are specified");
    }
    if let Some(creds) = creds {
        let (username, password) = match creds.split_once(':') {
            Some(("", _)) => bail!("username can't be empty"),
            Some((u, p)) => (u, p),
            None => (creds, ""),
        };
        return Ok(Some(cri::AuthConfig {
            username: username.to_owned(),
            password: password.to_owned(),
            ..Default::default()
        }));
    }
    Ok(auth.map(|a| cri::AuthConfig {
        auth: a.to_owned(),
        ..Default::default()
    }))
}

async fn image_status(
    c: &mut Clients,
    image: &str,
    verbose: bool,
) -> Result<cri::ImageStatusResponse> {
    let mut is = c.image().await?;
    let req = cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        verbose,
    };
    Ok(
        c.call("ImageStatus", c.deadline(), req, |r| is.image_status(r))
            .await?,
    )
}

/// Whether the runtime has `image`.
pub async fn image_present(c: &mut Clients, image: &str) -> Result<bool> {
    Ok(image_status(c, image, false)
        .await
        .with_context(|| format!("image status for {image:?}"))?
        .image
        .is_some())
}

/// PullImage, without a deadline: pulls take as long as they take.
pub async fn pull_image(
    c: &mut Clients,
    image: &str,
    auth: Option<cri::AuthConfig>,
    sandbox: Option<cri::PodSandboxConfig>,
    annotations: HashMap<String, String>,
    progress: ProgressMode,
) -> Result<String> {
    let mut is = c.image().await?;
    let watcher = c.pull_progress().await.ok();
    let req = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            annotations,
            ..Default::default()
        }),
        auth,
        sandbox_config: sandbox,
    };
    let r = while_pulling(
        watcher,
        image,
        progress,
        c.call("PullImage", None, req, |r| is.pull_image(r)),
    )
    .await
    .with_context(|| format!("pulling image {image:?}"))?;
    Ok(r.image_ref)
}

pub async fn pull(c: &mut Clients, a: PullArgs) -> Result<()> {
    let auth = auth_config(a.creds.as_deref(), a.auth.as_deref())?;
    let sandbox = match &a.pod_config {
        Some(p) => Some(load_pod_config(p).context("load podSandboxConfig")?),
        None => None,
    };
    let annotations = parse_labels(&a.annotations)?;
    let image_ref = pull_image(c, &a.image, auth, sandbox, annotations, a.progress)
        .await
        .context("pulling image")?;
    println!("Image is up to date for {image_ref}");
    Ok(())
}

async fn list_images(c: &mut Clients, name: Option<&str>) -> Result<Vec<cri::Image>> {
    let mut is = c.image().await?;
    let req = cri::ListImagesRequest {
        filter: Some(cri::ImageFilter {
            image: Some(cri::ImageSpec {
                image: name.unwrap_or_default().to_owned(),
                ..Default::default()
            }),
        }),
    };
    let mut images = c
        .call("ListImages", c.deadline(), req, |r| is.list_images(r))
        .await
        .context("listing images")?
        .images;
    // crictl's imageByRef.
    images.sort_by(|x, y| {
        if let (Some(a), Some(b)) = (x.repo_tags.first(), y.repo_tags.first()) {
            return a.cmp(b);
        }
        if let (Some(a), Some(b)) = (x.repo_digests.first(), y.repo_digests.first()) {
            return a.cmp(b);
        }
        x.id.cmp(&y.id)
    });
    Ok(images)
}

/// (repository, digest) of the first repo digest, or `<none>`s.
fn normalize_repo_digest(digests: &[String]) -> (String, String) {
    let Some(first) = digests.first() else {
        return ("<none>".into(), "<none>".into());
    };
    let parts: Vec<&str> = first.split('@').collect();
    if parts.len() != 2 {
        return ("errorName".into(), "errorRepoDigest".into());
    }
    (parts[0].to_owned(), parts[1].to_owned())
}

/// (repository, tag) pairs of the repo tags.
fn normalize_repo_tags(tags: &[String], image_name: &str) -> Vec<(String, String)> {
    if tags.is_empty() {
        return vec![(image_name.to_owned(), "<none>".to_owned())];
    }
    tags.iter()
        .map(|t| match t.rfind(':') {
            None => ("errorRepoTag".to_owned(), "errorRepoTag".to_owned()),
            Some(i) => {
                let name = &t[..i];
                let name = if name == "<none>" { image_name } else { name };
                (name.to_owned(), t[i + 1..].to_owned())
            }
        })
        .collect()
}

pub async fn images(c: &mut Clients, a: ImagesArgs) -> Result<()> {
    let images = list_images(c, a.image.as_deref()).await?;
    if print_list(
        &cri::ListImagesResponse {
            images: images.clone(),
        },
        a.output,
    ) {
        return Ok(());
    }
    let mut table = Table::default();
    if !a.verbose && !a.quiet {
        let mut row = vec!["IMAGE", "TAG"];
        if a.digests {
            row.push("DIGEST");
        }
        row.extend(["IMAGE ID", "SIZE"]);
        if a.pinned {
            row.push("PINNED");
        }
        table.row(row);
    }
    for image in &images {
        if a.quiet {
            println!("{}", image.id);
            continue;
        }
        if !a.verbose {
            let (name, mut digest) = normalize_repo_digest(&image.repo_digests);
            let size = human_size_with_precision(image.size as f64, 3);
            let mut id = image.id.clone();
            if !a.no_trunc {
                id = truncate_id(&id, "sha256:");
                digest = truncate_id(&digest, "sha256:");
            }
            for (repo, tag) in normalize_repo_tags(&image.repo_tags, &name) {
                let mut row = vec![repo, tag];
                if a.digests {
                    row.push(digest.clone());
                }
                row.extend([id.clone(), size.clone()]);
                if a.pinned {
                    row.push(image.pinned.to_string());
                }
                table.row(row);
            }
            continue;
        }
        println!("ID: {}", image.id);
        for tag in &image.repo_tags {
            println!("RepoTags: {tag}");
        }
        for digest in &image.repo_digests {
            println!("RepoDigests: {digest}");
        }
        if image.size != 0 {
            println!("Size: {}", image.size);
        }
        if let Some(uid) = &image.uid {
            println!("Uid: value:{}", uid.value);
        }
        if !image.username.is_empty() {
            println!("Username: {}", image.username);
        }
        if image.pinned {
            println!("Pinned: true");
        }
        println!();
    }
    table.print();
    Ok(())
}

pub async fn inspecti(c: &mut Clients, a: InspectiArgs) -> Result<()> {
    let verbose = !a.quiet;
    let mut statuses = Vec::new();
    for name in &a.images {
        let r = image_status(c, name, verbose)
            .await
            .with_context(|| format!("image status for {name:?} request"))?;
        let Some(image) = &r.image else {
            bail!("no such image {name:?} present");
        };
        if a.output == StatusFormat::Table {
            println!("ID: {}", image.id);
            for tag in &image.repo_tags {
                println!("Tag: {tag}");
            }
            for digest in &image.repo_digests {
                println!("Digest: {digest}");
            }
            println!("Size: {}", human_size_with_precision(image.size as f64, 3));
            if verbose {
                println!("Info: {}", go_map(&r.info));
            }
        } else {
            statuses.push(StatusData::new(
                to_json(image, JsonStyle::Full),
                r.info.clone(),
            ));
        }
    }
    print_status_data(&statuses, a.output)
}

pub async fn rmi(c: &mut Clients, a: RmiArgs) -> Result<()> {
    // Image (as given, or id) -> whether to remove it.
    let mut ids: BTreeMap<String, bool> = a.images.iter().map(|i| (i.clone(), true)).collect();
    if a.all || a.prune {
        for image in list_images(c, None).await? {
            if a.prune && image.pinned {
                continue;
            }
            ids.insert(image.id, true);
        }
    }
    if a.prune {
        let mut rt = c.runtime().await?;
        let req = cri::ListContainersRequest { filter: None };
        let containers = c
            .call("ListContainers", c.deadline(), req, |r| {
                rt.list_containers(r)
            })
            .await?
            .containers;
        for container in containers {
            let image = container.image.map(|i| i.image).unwrap_or_default();
            match image_status(c, &image, false).await {
                Ok(r) => {
                    if let Some(i) = r.image {
                        ids.insert(i.id, false);
                    }
                }
                Err(e) => super::error(format!("image status request for {image:?} failed: {e:#}")),
            }
        }
    }
    if ids.is_empty() {
        if a.all || a.prune {
            info("No images to remove");
            return Ok(());
        }
        bail!("give one or more images, --all or --prune");
    }
    let mut errors = Vec::new();
    for (id, remove) in ids {
        if !remove {
            continue;
        }
        if let Err(e) = remove_image(c, &id, a.prune).await {
            errors.push(e);
        }
    }
    aggregate(errors)
}

async fn remove_image(c: &mut Clients, id: &str, prune: bool) -> Result<()> {
    let status = image_status(c, id, false)
        .await
        .with_context(|| format!("image status request for {id:?} failed"))?;
    let Some(image) = status.image else {
        bail!("no such image {id}");
    };
    let mut is = c.image().await?;
    let req = cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: id.to_owned(),
            ..Default::default()
        }),
    };
    if let Err(e) = c
        .call("RemoveImage", c.deadline(), req, |r| is.remove_image(r))
        .await
    {
        // Races are expected when pruning.
        if prune {
            return Ok(());
        }
        return Err(anyhow::Error::new(e).context(format!("error of removing image {id:?}")));
    }
    let names = if image.repo_tags.is_empty() {
        &image.repo_digests
    } else {
        &image.repo_tags
    };
    for name in names {
        println!("Deleted: {name}");
    }
    Ok(())
}

pub async fn imagefsinfo(c: &mut Clients, a: ImagefsinfoArgs) -> Result<()> {
    let mut is = c.image().await?;
    let r = c
        .call(
            "ImageFsInfo",
            c.deadline(),
            cri::ImageFsInfoRequest {},
            |r| is.image_fs_info(r),
        )
        .await
        .context("image filesystem info request")?;
    if a.output != StatusFormat::Table {
        let data = StatusData::new(to_json(&r, JsonStyle::Full), HashMap::new());
        return print_status_data(&[data], a.output);
    }
    let print = |label: &str, fs: &[cri::FilesystemUsage]| {
        println!("{label} Filesystem ");
        for (i, f) in fs.iter().enumerate() {
            println!("TimeStamp[{i}]: {}", f.timestamp);
            println!(
                "Disk[{i}]: {}",
                human_size(f.used_bytes.as_ref().map_or(0, |v| v.value) as f64)
            );
            println!(
                "Inodes[{i}]: {}",
                f.inodes_used.as_ref().map_or(0, |v| v.value)
            );
            println!(
                "Mountpoint[{i}]: {}",
                f.fs_id
                    .as_ref()
                    .map(|f| f.mountpoint.as_str())
                    .unwrap_or_default()
            );
        }
    };
    print("Container", &r.container_filesystems);
    print("Image", &r.image_filesystems);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let a = auth_config(Some("u:p:q"), None).unwrap().unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p:q"));
        let a = auth_config(Some("u"), None).unwrap().unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", ""));
        assert!(auth_config(Some(":p"), None).is_err());
        assert!(auth_config(Some("u:p"), Some("eA==")).is_err());
        assert_eq!(
            auth_config(None, Some("eA==")).unwrap().unwrap().auth,
            "eA=="
        );
        assert!(auth_config(None, None).unwrap().is_none());
    }

    #[test]
    fn repo_tags_and_digests() {
        assert_eq!(
            normalize_repo_digest(&["docker.io/library/busybox@sha256:abc".into()]),
            ("docker.io/library/busybox".into(), "sha256:abc".into())
        );
        assert_eq!(
            normalize_repo_digest(&[]),
            ("<none>".into(), "<none>".into())
        );
        assert_eq!(
            normalize_repo_tags(&["localhost:5000/a/b:v1".into()], "x"),
            vec![("localhost:5000/a/b".into(), "v1".into())]
        );
        assert_eq!(
            normalize_repo_tags(&[], "repo"),
            vec![("repo".into(), "<none>".into())]
        );
    }
}
