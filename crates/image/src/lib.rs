//! berth-image: the image layer. Turns image references into content-
//! addressed blobs and unpacked overlayfs snapshots. Knows nothing of
//! containers or pods.

pub mod content;
pub mod credentials;
pub mod db;
pub mod digest;
mod error;
pub mod hosts;
mod layout;
mod lease;
mod metadata;
pub mod pull;
pub mod reference;
pub mod registry;
mod stack;
mod store;
pub mod unpack;

pub use error::{Error, Result};
pub use pull::{Auth, Progress, ProgressFn, PullOptions};
pub use reference::Reference;
pub use store::{
    mount_overlay, mount_overlay_idmapped, mount_overlay_volume, mount_overlay_volume_idmapped,
    FsUsage, GcStats, Image, ImageConfig, ImageStore, RootfsMount, StoreOptions,
};
pub use unpack::UnpackLimits;
