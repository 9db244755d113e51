//! A shim started by an older berthd (its extension spoke JSON) keeps
//! working with this client after berthd is upgraded: SetExecTimeout and
//! Report fall back to JSON when the shim refuses protobuf.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_shim_client::ShimClient;
use ttrpc::proto::ResponseInit;
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

/// The old shim's handler: JSON in, JSON out, INVALID_ARGUMENT
/// "decoding the request: ..." for anything else.
struct OldJsonHandler {
    method: &'static str,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

#[async_trait]
impl MethodHandler for OldJsonHandler {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&req.payload) else {
            return Ok(ttrpc::Response::init_status(ttrpc::get_status(
                ttrpc::Code::INVALID_ARGUMENT,
                "decoding the request: expected value at line 1 column 1",
            )));
        };
        self.seen.lock().unwrap().push(v);
        let body = match self.method {
            "Report" => serde_json::json!({"pid": 42, "status": "stopped", "exit_status": 137,
                "exited_at": "2026-12-03T00:00:00Z", "oom_killed": false, "timed_out": true}),
            _ => serde_json::json!({}),
        };
        let mut res =
            ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, String::new()));
        res.set_payload(body.to_string().into_bytes());
        Ok(res)
    }
}

#[tokio::test]
async fn an_older_json_shim_is_still_understood() {
    let dir = std::env::temp_dir().join(format!("berth-shim-compat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("s");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    for m in ["Report", "SetExecTimeout"] {
        methods.insert(
            m.into(),
            Box::new(OldJsonHandler {
                method: m,
                seen: Arc::clone(&seen),
            }),
        );
    }
    let mut services = HashMap::new();
    services.insert(
        berth_shim_client::SHIM_SERVICE.to_owned(),
        Service {
            methods,
            streams: HashMap::new(),
        },
    );
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .unwrap()
        .register_service(services);
    server.start().await.unwrap();

    let client = ShimClient::connect(socket.to_str().unwrap()).await.unwrap();
    client
        .set_exec_timeout("c1", "e1", std::time::Duration::from_secs(3))
        .await
        .unwrap();
    let report = client.report("c1", "e1").await.unwrap();
    assert_eq!(report.pid, 42);
    assert_eq!(report.exit_status, Some(137));
    assert!(report.timed_out);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0]["timeout_ms"], 3000);
    assert_eq!(seen[0]["exec_id"], "e1");
    assert_eq!(seen[1]["id"], "c1");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
