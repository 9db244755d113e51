//! Freezing and thawing (pause/resume): v1 freezer.state, v2 cgroup.freeze.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fs;
use crate::{Error, Manager, Result};

const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

impl Manager {
    fn v1_freezer(&self) -> Option<&Path> {
        self.v1_path("freezer")
    }

    /// Freezes every process of the cgroup and returns once they all are.
    pub fn freeze(&self) -> Result<()> {
        if let Some(dir) = self.v1_freezer() {
            return freeze_v1(dir);
        }
        let dir = self.unified_path().ok_or_else(|| {
            Error::Unsupported("no freezer: neither a v1 freezer hierarchy nor cgroup v2".into())
        })?;
        fs::write(dir, "cgroup.freeze", "1")?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut delay = Duration::from_micros(100);
        loop {
            let events = fs::read_keyed(dir, "cgroup.events")?;
            if fs::keyed(&events, "frozen") == Some(1) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = fs::write(dir, "cgroup.freeze", "0");
                return Err(Error::FreezeTimeout {
                    path: dir.to_owned(),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(10));
        }
    }

    pub fn thaw(&self) -> Result<()> {
        if let Some(dir) = self.v1_freezer() {
            return fs::write(dir, "freezer.state", "THAWED");
        }
        match self.unified_path() {
            Some(dir) => fs::write(dir, "cgroup.freeze", "0"),
            None => Err(Error::Unsupported("no freezer on this host".into())),
        }
    }

    pub fn is_frozen(&self) -> bool {
        if let Some(dir) = self.v1_freezer() {
            return fs::read(dir, "freezer.state").is_ok_and(|s| s == "FROZEN");
        }
        self.unified_path()
            .is_some_and(|dir| fs::read(dir, "cgroup.freeze").is_ok_and(|s| s == "1"))
    }
}

/// v1 can stall in FREEZING when a task is in an uninterruptible sleep:
/// keep asking, as runc does, until FROZEN or the deadline.
fn freeze_v1(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let mut delay = Duration::from_micros(100);
    loop {
        fs::write(dir, "freezer.state", "FROZEN")?;
        if fs::read(dir, "freezer.state")? == "FROZEN" {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = fs::write(dir, "freezer.state", "THAWED");
            return Err(Error::FreezeTimeout {
                path: dir.to_owned(),
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}
