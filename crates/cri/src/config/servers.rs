//! The sections of berth.toml for berthd's servers: `[grpc]` (the CRI
//! server's threads), `[stream]` (exec, attach and port-forward URLs) and
//! `[metrics]` (its own Prometheus endpoint).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[metrics]` in berth.toml: where berthd serves its own metrics
/// (`GET /metrics`, Prometheus text), as containerd's `[metrics] address`.
/// Absent: no listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ip:port`, e.g. "127.0.0.1:1338".
    pub address: Option<String>,
}

impl MetricsConfig {
    /// The address to listen on, checked; None when off.
    pub fn socket_addr(&self) -> Result<Option<std::net::SocketAddr>> {
        self.address
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| {
                    Error::Config(format!("metrics.address {a:?} is not an ip:port address"))
                })
            })
            .transpose()
    }
}

/// `[grpc]` in berth.toml: the CRI server (its socket is `socket`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Microseconds a berthd thread with nothing left to do keeps polling
    /// the CRI connections after a call before it sleeps, so that the next
    /// call of a burst (kubelet's relist, its stats loop) does not wait for
    /// a thread to wake; 0: threads sleep at once (no CPU spent polling).
    pub busy_poll_us: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            busy_poll_us: DEFAULT_BUSY_POLL_US,
        }
    }
}

impl GrpcConfig {
    /// The polling budget, checked.
    pub fn busy_poll(&self) -> Result<std::time::Duration> {
        busy_poll_budget("grpc.busy_poll_us", self.busy_poll_us)
    }
}

/// `[stream]` in berth.toml: where the kubelet's exec, attach and
/// port-forward URLs point (containerd's defaults: loopback, a free port).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    pub address: String,
    /// 0: a free port, chosen at start.
    pub port: u16,
    /// PEM certificate chain and key: the URLs are https.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Microseconds the streaming thread keeps polling its sockets after
    /// data moved before it sleeps, so that a port-forward's request and
    /// its answer do not each cost the thread a wake-up; when not 0, the
    /// thread also polls from the moment it hands out a URL until the
    /// client comes (1 ms at most). 0: it sleeps at once (no CPU spent
    /// polling).
    pub busy_poll_us: u64,
    /// An exec, attach or port-forward connection with no byte either way
    /// for this long is closed (containerd's `stream_idle_timeout`, a Go
    /// duration; "0": never). kubectl's PINGs keep a quiet session open.
    pub idle_timeout: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            address: "127.0.0.1".into(),
            port: 0,
            tls_cert: None,
            tls_key: None,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            idle_timeout: "4h".into(),
        }
    }
}

/// Go's scheduler (containerd's) spins for up to about this long before a
/// thread parks; a request/answer turn on one host fits in it.
const DEFAULT_BUSY_POLL_US: u64 = 50;

/// More than this is a thread spinning for no answer.
const MAX_BUSY_POLL_US: u64 = 1000;

/// A `busy_poll_us` (named `key` in errors) as a polling budget, refused
/// past MAX_BUSY_POLL_US.
fn busy_poll_budget(key: &str, us: u64) -> Result<std::time::Duration> {
    if us > MAX_BUSY_POLL_US {
        return Err(Error::Config(format!(
            "{key} {us} is above {MAX_BUSY_POLL_US}"
        )));
    }
    Ok(std::time::Duration::from_micros(us))
}

impl StreamConfig {
    /// The address to bind and the TLS files, checked.
    pub fn server_config(&self) -> Result<berth_stream::Config> {
        let ip: std::net::IpAddr = self.address.parse().map_err(|_| {
            Error::Config(format!(
                "stream.address {:?} is not an IP address",
                self.address
            ))
        })?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "stream: tls_cert and tls_key go together".into(),
                ))
            }
        };
        let idle_timeout = super::parse_go_duration(&self.idle_timeout).ok_or_else(|| {
            Error::Config(format!(
                "stream.idle_timeout {:?} is not a duration (e.g. \"4h\", \"30m\"; \"0\": never)",
                self.idle_timeout
            ))
        })?;
        Ok(berth_stream::Config {
            address: std::net::SocketAddr::new(ip, self.port),
            tls,
            busy_poll: busy_poll_budget("stream.busy_poll_us", self.busy_poll_us)?,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            ..berth_stream::Config::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;

    #[test]
    fn metrics_address_is_off_by_default_and_checked() {
        let mut c = Config::default();
        assert_eq!(c.metrics.socket_addr().unwrap(), None);
        c.metrics.address = Some("127.0.0.1:1338".into());
        assert_eq!(
            c.metrics.socket_addr().unwrap(),
            Some("127.0.0.1:1338".parse().unwrap())
        );
        c.validate().unwrap();
        c.metrics.address = Some("localhost".into());
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("metrics.address"), "{err}");
    }

    #[test]
    fn grpc_busy_poll_is_bounded() {
        let mut c = Config::default();
        assert_eq!(
            c.grpc.busy_poll().unwrap(),
            std::time::Duration::from_micros(50)
        );
        c.grpc.busy_poll_us = 0;
        assert!(c.grpc.busy_poll().unwrap().is_zero());
        c.grpc.busy_poll_us = 1001;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("grpc.busy_poll_us"), "{err}");
    }

    #[test]
    fn stream_busy_poll_is_bounded() {
        let mut c = Config::default();
        assert_eq!(
            c.stream.server_config().unwrap().busy_poll,
            Duration::from_micros(50)
        );
        c.stream.busy_poll_us = 0;
        assert!(c.stream.server_config().unwrap().busy_poll.is_zero());
        c.stream.busy_poll_us = 1001;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("stream.busy_poll_us"), "{err}");
    }

    #[test]
    fn stream_idle_timeout_is_containerds_and_a_go_duration() {
        let mut c = Config::default();
        let idle = |c: &Config| c.stream.server_config().unwrap().idle_timeout;
        assert_eq!(idle(&c), Some(Duration::from_secs(4 * 3600)));
        c.stream.idle_timeout = "1m30s".into();
        assert_eq!(idle(&c), Some(Duration::from_secs(90)));
        c.stream.idle_timeout = "0".into();
        assert_eq!(idle(&c), None);
        c.stream.idle_timeout = "4 hours".into();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("stream.idle_timeout"), "{err}");
    }
}
