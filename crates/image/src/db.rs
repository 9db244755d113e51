//! A redb database that survives a full disk.
//!
//! After one failed write (ENOSPC, EIO) redb refuses every later operation
//! with `PreviousIo` until the database is closed and opened again: one
//! moment of a full disk left berthd unable to record a pod or a container
//! exit until it was restarted (bench/soak's enospc fault). Operations run
//! through [`ReopeningDb::with`], which reopens the database (redb repairs
//! it on open) and tries once more when an operation fails that way.
// Operations return redb's own (large) error type, once per transaction.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableTable, TableDefinition};

pub struct ReopeningDb {
    path: PathBuf,
    /// None while a reopen failed; the next operation tries again.
    db: RwLock<Option<Database>>,
}

fn is_io(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

impl ReopeningDb {
    /// Opens (creating) the database at `path`.
    pub fn create(path: &Path) -> Result<ReopeningDb, Box<redb::Error>> {
        Ok(ReopeningDb {
            path: path.to_owned(),
            db: RwLock::new(Some(
                Database::create(path).map_err(|e| Box::new(e.into()))?,
            )),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` on the database; after an I/O failure, reopens it and
    /// runs `op` once more (the failed transaction left nothing behind).
    pub fn with<T>(
        &self,
        op: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, Box<redb::Error>> {
        let attempt = || match self.read().as_ref() {
            Some(db) => op(db),
            None => Err(redb::Error::PreviousIo),
        };
        match attempt() {
            Err(e) if is_io(&e) => {
                self.reopen().map_err(|reopen| {
                    log::warn!("{}: reopening after {e}: {reopen}", self.path.display());
                    reopen
                })?;
                attempt().map_err(Box::new)
            }
            r => r.map_err(Box::new),
        }
    }

    /// Every row of a table, keys and raw values, in one read transaction.
    pub fn rows(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, Vec<u8>)>, Box<redb::Error>> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let mut out = Vec::new();
            for row in tx.open_table(table)?.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn reopen(&self) -> Result<(), Box<redb::Error>> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle holds the file's lock: it goes before the new one.
        *db = None;
        *db = Some(Database::create(&self.path).map_err(|e| Box::new(e.into()))?);
        log::info!("{}: reopened after an I/O error", self.path.display());
        Ok(())
    }
}
