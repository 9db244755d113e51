//! CRI's ImageService over berth's image store.

use std::collections::HashMap;
use std::sync::Arc;

use berth_image::pull::{Auth, PullOptions};
use k8s_cri::v1 as cri;

use crate::error::{Error, Result};
use crate::service::Cri;
use crate::util::now_ns;

fn to_cri(i: &berth_image::Image) -> cri::Image {
    let user = i.config.user.clone().unwrap_or_default();
    let user = user.split(':').next().unwrap_or("").to_owned();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
        Err(_) if user.is_empty() => (None, String::new()),
        Err(_) => (None, user),
    };
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// Credentials from a CRI AuthConfig.
pub fn auth_of(a: Option<&cri::AuthConfig>) -> Result<Auth> {
    let Some(a) = a else {
        return Ok(Auth::Anonymous);
    };
    if !a.registry_token.is_empty() {
        return Ok(Auth::Bearer(a.registry_token.clone()));
    }
    if !a.username.is_empty() {
        return Ok(Auth::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        });
    }
    if !a.auth.is_empty() {
        let raw = base64_decode(a.auth.trim())
            .ok_or_else(|| Error::InvalidArgument("auth: not valid base64".into()))?;
        let text =
            String::from_utf8(raw).map_err(|_| Error::InvalidArgument("auth: not UTF-8".into()))?;
        let (u, p) = text.split_once(':').ok_or_else(|| {
            Error::InvalidArgument("auth: expected base64 of user:password".into())
        })?;
        return Ok(Auth::Basic {
            username: u.to_owned(),
            password: p.to_owned(),
        });
    }
    if !a.identity_token.is_empty() {
        return Err(Error::Unimplemented(
            "identity tokens (OAuth2 refresh tokens) are not supported; use registry_token or a password".into(),
        ));
    }
    Ok(Auth::Anonymous)
}

pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
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
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
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

impl Cri {
    fn image_store(&self) -> Arc<berth_image::ImageStore> {
        Arc::clone(&self.images)
    }

    pub async fn list_images(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        let store = self.image_store();
        let want = filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        tokio::task::spawn_blocking(move || -> Result<Vec<cri::Image>> {
            match want {
                Some(r) => Ok(store.status(&r)?.iter().map(to_cri).collect()),
                None => Ok(store.list()?.iter().map(to_cri).collect()),
            }
        })
        .await
        .map_err(|e| Error::internal("listing images", e))?
    }

    pub async fn image_status(
        &self,
        image: Option<cri::ImageSpec>,
        verbose: bool,
    ) -> Result<cri::ImageStatusResponse> {
        let reference = image
            .map(|i| i.image)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("ImageStatus: image is missing".into()))?;
        let store = self.image_store();
        let found = tokio::task::spawn_blocking(move || match store.status(&reference) {
            Ok(i) => Ok(i),
            // An unparsable name names no image we have.
            Err(berth_image::Error::InvalidReference { .. }) => Ok(None),
            Err(e) => Err(Error::from(e)),
        })
        .await
        .map_err(|e| Error::internal("image status", e))??;
        let mut info = HashMap::new();
        if verbose {
            if let Some(i) = &found {
                info.insert(
                    "info".to_owned(),
                    serde_json::json!({"imageSpec": i.config, "manifestDigest": i.manifest_digest})
                        .to_string(),
                );
            }
        }
        Ok(cri::ImageStatusResponse {
            image: found.as_ref().map(to_cri),
            info,
        })
    }

    pub async fn pull_image(&self, req: cri::PullImageRequest) -> Result<String> {
        let reference = req
            .image
            .map(|i| i.image)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("PullImage: image is missing".into()))?;
        let auth = auth_of(req.auth.as_ref())?;
        let auth_host = req
            .auth
            .as_ref()
            .map(|a| a.server_address.clone())
            .filter(|s| !s.is_empty());
        let started = now_ns();
        // Unparsable references fail in the pull itself, with its message.
        let publisher = berth_image::Reference::parse(&reference)
            .ok()
            .map(|r| self.pulls.start(&r.full()));
        let progress = publisher.as_ref().map(|p| {
            let reporter = p.reporter();
            Arc::new(move |p: &berth_image::Progress| reporter.report(p)) as berth_image::ProgressFn
        });
        let image = self
            .images
            .pull(
                &reference,
                &PullOptions {
                    auth,
                    auth_host,
                    progress,
                    ..Default::default()
                },
            )
            .await?;
        drop(publisher);
        tracing::info!(
            image = %reference,
            id = %image.id,
            ms = (now_ns() - started) / 1_000_000,
            "pulled"
        );
        Ok(image.id)
    }

    pub async fn remove_image(&self, image: Option<cri::ImageSpec>) -> Result<()> {
        let reference = image
            .map(|i| i.image)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("RemoveImage: image is missing".into()))?;
        let store = self.image_store();
        tokio::task::spawn_blocking(move || -> Result<()> {
            match store.remove(&reference) {
                Ok(()) => {}
                Err(berth_image::Error::InvalidReference { .. })
                | Err(berth_image::Error::ImageNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            store.gc()?;
            Ok(())
        })
        .await
        .map_err(|e| Error::internal("removing an image", e))?
    }

    pub async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let store = self.image_store();
        let usage = tokio::task::spawn_blocking(move || store.fs_usage())
            .await
            .map_err(|e| Error::internal("image fs usage", e))??;
        let now = now_ns();
        let fs = cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.config.root.join("images").display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_configs() {
        assert!(matches!(auth_of(None).unwrap(), Auth::Anonymous));
        let a = cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        match auth_of(Some(&a)).unwrap() {
            Auth::Basic { username, password } => {
                assert_eq!((username.as_str(), password.as_str()), ("user", "pass"))
            }
            other => panic!("{other:?}"),
        }
        let a = cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(auth_of(Some(&a)).is_err());
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
    }
}
