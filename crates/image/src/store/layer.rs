//! Unpacking one layer of an image into its snapshot: alone on the
//! recorded layers below it (an import), or side by side with them (a
//! pull, coordinated by [`LayerStack`]).

use std::fs;
use std::io::Read;
use std::sync::Arc;

use super::{remove_all, ImageStore};
use crate::digest::Digest;
use crate::error::{io_path, Context};
use crate::metadata::{LayerRecord, SnapshotRecord};
use crate::stack::LayerStack;
use crate::unpack::{self, Bounds, Compression, LowerDirs};
use crate::{Error, Result};

impl ImageStore {
    /// Unpacks layer `index` of `layers` on top of the ones below it unless
    /// its chain is already there (`stack`: the pull unpacking the others
    /// beside it), within the store's [`UnpackLimits`]
    /// (`image_compressed`: the bytes of all the image's layer blobs). A
    /// refused layer leaves no snapshot directory and no record.
    pub(crate) fn unpack_layer(
        &self,
        layers: &[LayerRecord],
        index: usize,
        image_compressed: u64,
        stack: Option<&LayerStack>,
    ) -> Result<()> {
        let record = &layers[index];
        let layer = &Digest::parse(&record.digest)?;
        let media_type = record.media_type.as_str();
        let expected_diff = &Digest::parse(&record.diff_id)?;
        let chain = &Digest::parse(&record.chain_id)?;
        let parent = match index.checked_sub(1) {
            Some(below) => Some(Digest::parse(&layers[below].chain_id)?),
            None => None,
        };
        let parent = parent.as_ref();
        let _claim = self.claims.claim(chain.as_str());
        if let Some(existing) = self.meta.snapshot(chain.as_str())? {
            if let Some(stack) = stack {
                stack
                    .image_used
                    .fetch_add(existing.size, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(());
        }
        // Alone, the layers below are there already; side by side with
        // them (a pull), they are waited for only when needed and before
        // this layer is recorded.
        let wait_below = || stack.map_or(Ok(()), |stack| stack.wait_below(index));
        let (lowers, image_used) = match (parent, stack) {
            (Some(p), None) => {
                let (dirs, used) = self.chain(p.as_str())?;
                (LowerDirs::ready(dirs), used)
            }
            (Some(p), Some(_)) => {
                let lowers = LowerDirs::lazy(move || {
                    wait_below()?;
                    Ok(self.chain(p.as_str())?.0)
                });
                (lowers, 0)
            }
            (None, _) => (LowerDirs::ready(Vec::new()), 0),
        };
        let limits = self.unpack_limits();
        let compressed = self
            .content
            .size(layer)
            .ok_or_else(|| Error::BlobNotFound(layer.to_string()))?;
        let bounds = Bounds {
            layer_limit: limits.layer_limit(compressed),
            image_limit: limits.image_limit(image_compressed.max(compressed)),
            image_used,
            image_shared: stack.map(|stack| Arc::clone(&stack.image_used)),
            limits,
        };
        // Nothing is created when the filesystem is already at its reserve.
        let snapshots = self.root.join("snapshots");
        let snapshots_fd = fs::File::open(&snapshots).ctx(io_path(&snapshots))?;
        unpack::check_space(
            std::os::fd::AsFd::as_fd(&snapshots_fd),
            &snapshots,
            layer.as_str(),
            &limits,
            0,
        )?;
        drop(snapshots_fd);
        let id = self.meta.next_id()?;
        let dir = self.create_snapshot_dir(id, &["fs"])?;
        let fs_dir = dir.join("fs");
        let result = (|| {
            let mut blob = self.content.open_blob(layer)?;
            let mut head = [0u8; 4];
            let n = blob
                .read(&mut head)
                .ctx(|| format!("reading layer {layer}"))?;
            use std::io::Seek;
            blob.rewind().ctx(|| format!("reading layer {layer}"))?;
            let compression = Compression::from_media_type(media_type)
                .unwrap_or_else(|| Compression::sniff(&head[..n]));
            let reader = compression
                .decoder(std::io::BufReader::with_capacity(256 * 1024, blob))
                .ctx(|| format!("decompressing layer {layer}"))?;
            let applied =
                unpack::apply_layer_lazy(reader, layer.as_str(), &fs_dir, lowers, &bounds)?;
            if &applied.diff_id != expected_diff {
                return Err(Error::DiffIdMismatch {
                    layer: layer.to_string(),
                    expected: expected_diff.to_string(),
                    actual: applied.diff_id.to_string(),
                });
            }
            // The parent's record first: a recorded chain's parent exists.
            wait_below()?;
            Ok(applied)
        })();
        match result {
            Ok(applied) => {
                let _gc = self.unpack_lock.lock().unwrap_or_else(|e| e.into_inner());
                self.meta.put_snapshot(
                    chain.as_str(),
                    &SnapshotRecord {
                        id,
                        parent: parent.map(|p| p.to_string()),
                        size: applied.size,
                        inodes: applied.inodes,
                    },
                )
            }
            Err(e) => {
                let _ = remove_all(&dir);
                Err(e)
            }
        }
    }
}
