//! A pull's progress on stderr while PullImage runs.
//!
//! CRI's PullImage says nothing until the end; berthd also serves
//! berth.v1.Images/WatchPull, which streams per-layer byte counts of the
//! pull. Other runtimes do not: then there is simply no progress shown.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use berth_api::v1::images_client::ImagesClient;
use berth_api::v1::{PullProgress, WatchPullRequest};
use clap::ValueEnum;
use tonic::transport::Channel;

use crate::output::human_size;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, nothing otherwise
    Auto,
    /// A bar redrawn in place
    Bar,
    /// A line per update (for logs)
    Plain,
    /// Nothing
    None,
}

/// The bytes and layers of one message: (done, total, layers done, layers).
fn totals(p: &PullProgress) -> (u64, u64, usize, usize) {
    let done = p.layers.iter().map(|l| l.done.min(l.total)).sum();
    let total = p.layers.iter().map(|l| l.total).sum();
    let complete = p
        .layers
        .iter()
        .filter(|l| l.total > 0 && l.done >= l.total)
        .count();
    (done, total, complete, p.layers.len())
}

const BAR_WIDTH: usize = 30;

pub fn bar_line(image: &str, p: &PullProgress) -> String {
    if p.layers.is_empty() && !p.finished {
        return format!("Resolving {image}");
    }
    let (done, total, complete, layers) = totals(p);
    let filled = if total == 0 {
        0
    } else {
        ((done as u128 * BAR_WIDTH as u128) / total as u128) as usize
    };
    format!(
        "Pulling {image} [{}{}] {} / {}, {complete}/{layers} layers",
        "=".repeat(filled),
        " ".repeat(BAR_WIDTH - filled),
        human_size(done as f64),
        human_size(total as f64),
    )
}

pub fn plain_line(image: &str, p: &PullProgress) -> String {
    if p.layers.is_empty() && !p.finished {
        return format!("resolving {image}");
    }
    let (done, total, complete, layers) = totals(p);
    let state = if p.finished { "finished" } else { "pulling" };
    format!("{state} {image}: {done}/{total} bytes, {complete}/{layers} layers")
}

/// Runs `pull` while drawing the progress that `client` streams for `image`.
pub async fn while_pulling<F: Future>(
    client: Option<ImagesClient<Channel>>,
    image: &str,
    mode: ProgressMode,
    pull: F,
) -> F::Output {
    let bar = match mode {
        ProgressMode::None => return pull.await,
        ProgressMode::Auto if !std::io::stderr().is_terminal() => return pull.await,
        ProgressMode::Auto | ProgressMode::Bar => true,
        ProgressMode::Plain => false,
    };
    let Some(mut client) = client else {
        return pull.await;
    };
    let name = image.to_owned();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        let stream = client
            .watch_pull(WatchPullRequest {
                image: name.clone(),
            })
            .await;
        let _ = started_tx.send(());
        // Unimplemented (another runtime) or a bad name: PullImage will say.
        let Ok(stream) = stream else { return };
        let mut stream = stream.into_inner();
        let mut drawn = false;
        while let Ok(Some(p)) = stream.message().await {
            let mut err = std::io::stderr().lock();
            if bar {
                let _ = write!(err, "\r\x1b[K{}", bar_line(&name, &p));
                drawn = true;
            } else {
                let _ = writeln!(err, "{}", plain_line(&name, &p));
            }
            let _ = err.flush();
            if p.finished {
                break;
            }
        }
        if drawn {
            let _ = writeln!(std::io::stderr());
        }
    });
    // The watch should be registered before the pull starts, so that even a
    // quick pull is seen from its start; but never hold the pull up long.
    let _ = tokio::time::timeout(Duration::from_millis(500), started_rx).await;
    let result = pull.await;
    // The last message (finished) follows the pull's end closely.
    let abort = watcher.abort_handle();
    if tokio::time::timeout(Duration::from_millis(500), watcher)
        .await
        .is_err()
    {
        abort.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::v1::LayerProgress;

    fn msg(layers: &[(u64, u64)], finished: bool) -> PullProgress {
        PullProgress {
            image: "docker.io/library/busybox:latest".into(),
            layers: layers
                .iter()
                .enumerate()
                .map(|(i, &(done, total))| LayerProgress {
                    digest: format!("sha256:{i}"),
                    done,
                    total,
                })
                .collect(),
            finished,
        }
    }

    #[test]
    fn lines() {
        let p = msg(&[(1 << 20, 1 << 20), (0, 3 << 20)], false);
        assert_eq!(
            plain_line("busybox", &p),
            "pulling busybox: 1048576/4194304 bytes, 1/2 layers"
        );
        let line = bar_line("busybox", &p);
        assert!(
            line.starts_with(&format!(
                "Pulling busybox [{}{}]",
                "=".repeat(7),
                " ".repeat(23)
            )),
            "{line}"
        );
        assert!(line.ends_with("1/2 layers"), "{line}");
        let done = msg(&[(5, 5)], true);
        assert_eq!(plain_line("b", &done), "finished b: 5/5 bytes, 1/1 layers");
        assert_eq!(bar_line("b", &msg(&[], false)), "Resolving b");
        assert_eq!(
            plain_line("b", &msg(&[], true)),
            "finished b: 0/0 bytes, 0/0 layers"
        );
    }
}
