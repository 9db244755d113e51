//! Image and snapshot metadata in redb: every change is one transaction,
//! so a crash leaves either the old or the new state. Files on disk are
//! written before the records that point at them; files without records
//! are removed when the store opens.
// The closures run by ReopeningDb::with return redb's own (large) error
// type, once per transaction.
#![allow(clippy::result_large_err)]

use std::path::Path;

use redb::{ReadableTable, TableDefinition};

use crate::db::ReopeningDb;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::Result;

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const ACTIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("active");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub diff_id: String,
    pub chain_id: String,
}

/// An image name and what it points at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The full reference: `docker.io/library/busybox:latest` or `name@sha256:…`.
    pub name: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The index the manifest was chosen from, when there was one.
    #[serde(default)]
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub layers: Vec<LayerRecord>,
    /// Bytes of the manifest, config and layer blobs.
    pub size: u64,
    pub created: u64,
}

/// An unpacked layer chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotRecord {
    pub id: u64,
    pub parent: Option<String>,
    pub size: u64,
    pub inodes: u64,
}

/// A writable rootfs on top of a chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActiveRecord {
    pub id: u64,
    pub parent: String,
}

pub struct Metadata {
    db: ReopeningDb,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| crate::Error::Metadata(format!("corrupt record: {e}")))
}

macro_rules! table_fns {
    ($get:ident, $put:ident, $del:ident, $all:ident, $table:ident, $ty:ty) => {
        // Not every table needs every accessor.
        #[allow(dead_code)]
        pub fn $get(&self, key: &str) -> Result<Option<$ty>> {
            let bytes = self.db.with(|db| {
                let tx = db.begin_read()?;
                let table = tx.open_table($table)?;
                Ok(table.get(key)?.map(|v| v.value().to_vec()))
            })?;
            bytes.map(|b| decode(&b)).transpose()
        }

        #[allow(dead_code)]
        pub fn $put(&self, key: &str, value: &$ty) -> Result<()> {
            let bytes = encode(value);
            Ok(self.db.with(|db| {
                let tx = db.begin_write()?;
                tx.open_table($table)?.insert(key, bytes.as_slice())?;
                tx.commit()?;
                Ok(())
            })?)
        }

        #[allow(dead_code)]
        pub fn $del(&self, key: &str) -> Result<()> {
            Ok(self.db.with(|db| {
                let tx = db.begin_write()?;
                tx.open_table($table)?.remove(key)?;
                tx.commit()?;
                Ok(())
            })?)
        }

        pub fn $all(&self) -> Result<Vec<(String, $ty)>> {
            self.db
                .rows($table)?
                .into_iter()
                .map(|(k, v)| Ok((k, decode(&v)?)))
                .collect()
        }
    };
}

impl Metadata {
    /// Opens (creating) the database, readable by root only (0600, also
    /// when an older version created it with a wider mode).
    pub fn open(path: &Path) -> Result<Metadata> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |source: std::io::Error| crate::Error::Io {
            context: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::other("not a regular file")));
        }
        if meta.permissions().mode() & 0o7777 != 0o600 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        drop(file);
        let db = ReopeningDb::create(path)?;
        db.with(|db| {
            let tx = db.begin_write()?;
            tx.open_table(IMAGES)?;
            tx.open_table(SNAPSHOTS)?;
            tx.open_table(ACTIVE)?;
            tx.open_table(COUNTERS)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok(Metadata { db })
    }

    table_fns!(image, put_image, delete_image, images, IMAGES, ImageRecord);
    table_fns!(
        snapshot,
        put_snapshot,
        delete_snapshot,
        snapshots,
        SNAPSHOTS,
        SnapshotRecord
    );
    table_fns!(
        active,
        put_active,
        delete_active,
        actives,
        ACTIVE,
        ActiveRecord
    );

    /// A new, never reused snapshot id.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.with(|db| {
            let tx = db.begin_write()?;
            let id = {
                let mut t = tx.open_table(COUNTERS)?;
                let next = t.get("snapshot")?.map(|v| v.value()).unwrap_or(0) + 1;
                t.insert("snapshot", next)?;
                next
            };
            tx.commit()?;
            Ok(id)
        })?)
    }

    /// Replaces several image names at once (a pull or import naming one image twice).
    pub fn put_images(&self, records: &[ImageRecord]) -> Result<()> {
        let rows: Vec<(&str, Vec<u8>)> = records
            .iter()
            .map(|r| (r.name.as_str(), encode(r)))
            .collect();
        Ok(self.db.with(|db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(IMAGES)?;
                for (name, bytes) in &rows {
                    t.insert(*name, bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })?)
    }

    pub fn delete_images(&self, names: &[String]) -> Result<()> {
        Ok(self.db.with(|db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(IMAGES)?;
                for n in names {
                    t.remove(n.as_str())?;
                }
            }
            tx.commit()?;
            Ok(())
        })?)
    }
}
