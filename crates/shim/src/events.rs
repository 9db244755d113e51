//! Publishing task events to the client's events service (containerd's
//! `containerd.services.events.ttrpc.v1.Events/Forward`).

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;

pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

pub enum Event {
    Create(ev::TaskCreate),
    Start(ev::TaskStart),
    Exit(ev::TaskExit),
    Delete(ev::TaskDelete),
    Oom(ev::TaskOOM),
    ExecAdded(ev::TaskExecAdded),
    ExecStarted(ev::TaskExecStarted),
    Paused(ev::TaskPaused),
    Resumed(ev::TaskResumed),
}

impl Event {
    fn parts(&self) -> (&'static str, &'static str, Vec<u8>) {
        fn bytes<M: Message>(m: &M) -> Vec<u8> {
            m.write_to_bytes().unwrap_or_default()
        }
        match self {
            Event::Create(e) => ("/tasks/create", "containerd.events.TaskCreate", bytes(e)),
            Event::Start(e) => ("/tasks/start", "containerd.events.TaskStart", bytes(e)),
            Event::Exit(e) => ("/tasks/exit", "containerd.events.TaskExit", bytes(e)),
            Event::Delete(e) => ("/tasks/delete", "containerd.events.TaskDelete", bytes(e)),
            Event::Oom(e) => ("/tasks/oom", "containerd.events.TaskOOM", bytes(e)),
            Event::ExecAdded(e) => (
                "/tasks/exec-added",
                "containerd.events.TaskExecAdded",
                bytes(e),
            ),
            Event::ExecStarted(e) => (
                "/tasks/exec-started",
                "containerd.events.TaskExecStarted",
                bytes(e),
            ),
            Event::Paused(e) => ("/tasks/paused", "containerd.events.TaskPaused", bytes(e)),
            Event::Resumed(e) => ("/tasks/resumed", "containerd.events.TaskResumed", bytes(e)),
        }
    }
}

/// Sends events in order from a background task; a client that is away
/// misses them (as with containerd's shims), the shim carries on.
#[derive(Clone)]
pub struct Publisher {
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl Publisher {
    pub fn start(address: String, namespace: String) -> Publisher {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            let mut client: Option<EventsClient> = None;
            while let Some(event) = rx.recv().await {
                let (topic, type_url, value) = event.parts();
                let mut any = Any::new();
                any.type_url = type_url.into();
                any.value = value;
                let mut envelope = Envelope::new();
                envelope.timestamp = MessageField::some(timestamp(std::time::SystemTime::now()));
                envelope.namespace = namespace.clone();
                envelope.topic = topic.into();
                envelope.event = MessageField::some(any);
                let mut req = ForwardRequest::new();
                req.envelope = MessageField::some(envelope);
                for _ in 0..2 {
                    if client.is_none() {
                        let addr = if address.starts_with("unix://") {
                            address.clone()
                        } else {
                            format!("unix://{address}")
                        };
                        match ttrpc::r#async::Client::connect(&addr).await {
                            Ok(c) => client = Some(EventsClient::new(c)),
                            Err(e) => {
                                log::debug!("events: connecting to {addr}: {e}");
                                break;
                            }
                        }
                    }
                    let c = client.as_ref().expect("connected");
                    match c
                        .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
                        .await
                    {
                        Ok(_) => break,
                        Err(e) => {
                            log::debug!("events: publishing {topic}: {e}");
                            client = None;
                        }
                    }
                }
            }
        });
        Publisher { tx }
    }

    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}
