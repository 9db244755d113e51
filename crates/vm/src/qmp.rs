//! A QMP client: QEMU's JSON machine protocol on a unix socket. One JSON
//! object per line; commands carry an `id` their answer echoes, events
//! (`{"event": ...}`) come in between and go to subscribers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

use crate::error::VmError;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, VmError>>>>>;

/// An event QEMU sent (`SHUTDOWN`, `STOP`, `DEVICE_DELETED`, ...).
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
}

impl Qmp {
    /// Connects, reads QEMU's greeting and leaves negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, VmError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| VmError::Qmp(format!("connecting to {}: {e}", path.display())))?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = lines
            .next_line()
            .await
            .map_err(|e| VmError::Qmp(format!("reading the greeting: {e}")))?
            .ok_or_else(|| VmError::Qmp("QEMU closed the socket before its greeting".into()))?;
        let greeting: Value = serde_json::from_str(&greeting)
            .map_err(|e| VmError::Qmp(format!("greeting {greeting:?}: {e}")))?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Qmp(format!("not a QMP greeting: {greeting}")));
        }
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(64);
        let reader_pending = Arc::clone(&pending);
        let reader_events = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!("QMP: unreadable message {line:?}");
                    continue;
                };
                if let Some(name) = msg.get("event").and_then(Value::as_str) {
                    let data = msg.get("data").cloned().unwrap_or(Value::Null);
                    let _ = reader_events.send(Event {
                        name: name.to_owned(),
                        data,
                    });
                    continue;
                }
                let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let answer = match (msg.get("return"), msg.get("error")) {
                    (Some(r), _) => Ok(r.clone()),
                    (None, Some(e)) => Err(VmError::QmpCommand {
                        class: e
                            .get("class")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        desc: e
                            .get("desc")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    }),
                    (None, None) => Err(VmError::Qmp(format!(
                        "answer without return or error: {msg}"
                    ))),
                };
                let waiter = lock(&reader_pending).remove(&id);
                if let Some(tx) = waiter {
                    let _ = tx.send(answer);
                }
            }
            // QEMU is gone: fail whatever still waits.
            lock(&reader_pending).clear();
        });
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs a command; its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let written = self.writer.lock().await.write_all(line.as_bytes()).await;
        if let Err(e) = written {
            lock(&self.pending).remove(&id);
            return Err(VmError::Qmp(format!("sending {command}: {e}")));
        }
        rx.await
            .map_err(|_| VmError::Qmp(format!("QEMU closed QMP before answering {command}")))?
    }

    /// Events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
