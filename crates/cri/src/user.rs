//! Resolving users and groups inside a container's root filesystem. The
//! files are image content: read inside the rootfs (no `..` or symlink
//! escape) and parsed defensively.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};

const MAX_DB_SIZE: u64 = 4 << 20;

fn read_in_root(root: &OwnedFd, path: &str) -> Option<String> {
    let fd = berth_common::safe_path::open_in_root(
        root.as_fd(),
        Path::new(path),
        OFlags::RDONLY | OFlags::NOFOLLOW,
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_DB_SIZE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || l.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The process user of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

pub struct UserDb {
    passwd: Vec<PasswdEntry>,
    group: Vec<GroupEntry>,
}

impl UserDb {
    /// Reads /etc/passwd and /etc/group of the rootfs (missing files are empty).
    pub fn open(rootfs: &Path) -> Result<UserDb> {
        let root: OwnedFd = rustix::fs::open(
            rootfs,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::internal(format!("opening the rootfs {}", rootfs.display()), e))?;
        Ok(UserDb {
            passwd: read_in_root(&root, "/etc/passwd")
                .map(|t| parse_passwd(&t))
                .unwrap_or_default(),
            group: read_in_root(&root, "/etc/group")
                .map(|t| parse_group(&t))
                .unwrap_or_default(),
        })
    }

    #[cfg(test)]
    fn from_text(passwd: &str, group: &str) -> UserDb {
        UserDb {
            passwd: parse_passwd(passwd),
            group: parse_group(group),
        }
    }

    fn group_id(&self, spec: &str) -> Result<u32> {
        if let Ok(n) = spec.parse::<u32>() {
            return Ok(n);
        }
        self.group
            .iter()
            .find(|g| g.name == spec)
            .map(|g| g.gid)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "group {spec:?} not found in the image's /etc/group"
                ))
            })
    }

    /// Resolves the user: an explicit uid (and gid), else a user name, else
    /// the image's `USER` (`name`, `uid`, `name:group`, `uid:gid`); groups
    /// listing the user and `supplemental` are added.
    pub fn resolve(
        &self,
        run_as_uid: Option<i64>,
        run_as_gid: Option<i64>,
        run_as_username: &str,
        image_user: &str,
        supplemental: &[i64],
        merge_image_groups: bool,
    ) -> Result<ResolvedUser> {
        let to_u32 = |v: i64, what: &str| -> Result<u32> {
            u32::try_from(v)
                .map_err(|_| Error::InvalidArgument(format!("{what} {v} is out of range")))
        };
        let (uid, mut gid, name) = if let Some(uid) = run_as_uid {
            let uid = to_u32(uid, "run_as_user")?;
            let entry = self.passwd.iter().find(|p| p.uid == uid);
            (
                uid,
                entry.map(|e| e.gid).unwrap_or(0),
                entry.map(|e| e.name.clone()),
            )
        } else if !run_as_username.is_empty() {
            let e = self
                .passwd
                .iter()
                .find(|p| p.name == run_as_username)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "user {run_as_username:?} not found in the image's /etc/passwd"
                    ))
                })?;
            (e.uid, e.gid, Some(e.name.clone()))
        } else if image_user.is_empty() {
            let entry = self.passwd.iter().find(|p| p.uid == 0);
            (
                0,
                entry.map(|e| e.gid).unwrap_or(0),
                entry.map(|e| e.name.clone()),
            )
        } else {
            let (user, group) = match image_user.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (image_user, None),
            };
            let (uid, gid, name) = match user.parse::<u32>() {
                Ok(uid) => {
                    let e = self.passwd.iter().find(|p| p.uid == uid);
                    (
                        uid,
                        e.map(|e| e.gid).unwrap_or(0),
                        e.map(|e| e.name.clone()),
                    )
                }
                Err(_) => {
                    let e = self.passwd.iter().find(|p| p.name == user).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "the image's user {user:?} is not in its /etc/passwd"
                        ))
                    })?;
                    (e.uid, e.gid, Some(e.name.clone()))
                }
            };
            let gid = match group {
                Some(g) => self.group_id(g)?,
                None => gid,
            };
            (uid, gid, name)
        };
        if let Some(g) = run_as_gid {
            gid = to_u32(g, "run_as_group")?;
        }
        let mut additional = vec![gid];
        if merge_image_groups {
            if let Some(name) = &name {
                for g in &self.group {
                    if g.members.iter().any(|m| m == name) {
                        additional.push(g.gid);
                    }
                }
            }
        }
        for g in supplemental {
            additional.push(to_u32(*g, "supplemental group")?);
        }
        let mut seen = std::collections::HashSet::new();
        additional.retain(|g| seen.insert(*g));
        Ok(ResolvedUser {
            uid,
            gid,
            additional_gids: additional,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nweb:x:1000:\nstaff:x:50:web,other\n";

    #[test]
    fn image_users_and_overrides() {
        let db = UserDb::from_text(PASSWD, GROUP);
        let r = db.resolve(None, None, "", "", &[], true).unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids.clone()), (0, 0, vec![0]));
        let r = db.resolve(None, None, "", "web", &[7], true).unwrap();
        assert_eq!(
            (r.uid, r.gid, r.additional_gids.clone()),
            (1000, 1000, vec![1000, 50, 7])
        );
        let r = db.resolve(None, None, "", "web", &[], false).unwrap();
        assert_eq!(r.additional_gids, vec![1000]);
        let r = db.resolve(None, None, "", "1000:staff", &[], true).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 50));
        let r = db.resolve(Some(4242), None, "", "web", &[], true).unwrap();
        assert_eq!((r.uid, r.gid), (4242, 0));
        let r = db.resolve(Some(1000), Some(3), "", "", &[], true).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 3));
        let r = db.resolve(None, None, "web", "root", &[], true).unwrap();
        assert_eq!(r.uid, 1000);
        assert!(db.resolve(None, None, "ghost", "", &[], true).is_err());
        assert!(db.resolve(None, None, "", "ghost", &[], true).is_err());
        assert!(db.resolve(Some(-1), None, "", "", &[], true).is_err());
    }
}
