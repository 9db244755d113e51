//! The remotecommand protocol versions (exec and attach) and the status
//! the error stream carries at the end, as the kubelet writes them.

use serde_json::json;

/// A remotecommand protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`: stdin, stdout, stderr, error (text).
    V1,
    /// `v2.channel.k8s.io`: streams created only when asked for.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a JSON metav1.Status
    /// with the exit code.
    V4,
    /// `v5.channel.k8s.io`: adds the close signal (WebSocket).
    V5,
}

impl Version {
    pub fn from_protocol(name: &str) -> Option<Version> {
        Some(match name {
            "" | "channel.k8s.io" | "base64.channel.k8s.io" => Version::V1,
            "v2.channel.k8s.io" => Version::V2,
            "v3.channel.k8s.io" => Version::V3,
            "v4.channel.k8s.io" | "v4.base64.channel.k8s.io" => Version::V4,
            "v5.channel.k8s.io" => Version::V5,
            _ => return None,
        })
    }

    pub fn has_resize(self) -> bool {
        self >= Version::V3
    }
}

/// How a command ended, as the error stream reports it: nothing (V1-V3
/// success), a text (V1-V3 failure) or a metav1.Status (V4+).
pub fn final_status(version: Version, result: &Result<i32, String>) -> Option<Vec<u8>> {
    let status = match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => {
            let message = format!("error executing command in container: {e}");
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {message}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            })
        }
    };
    if version >= Version::V4 {
        return Some(status.to_string().into_bytes());
    }
    match result {
        Ok(0) => None,
        _ => status["message"].as_str().map(|m| m.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_by_version() {
        let v: serde_json::Value =
            serde_json::from_slice(&final_status(Version::V4, &Ok(3)).unwrap()).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value =
            serde_json::from_slice(&final_status(Version::V5, &Ok(0)).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        assert_eq!(final_status(Version::V2, &Ok(0)), None);
        let text = String::from_utf8(final_status(Version::V1, &Ok(2)).unwrap()).unwrap();
        assert!(text.contains("non-zero exit code"), "{text}");
        let err: serde_json::Value = serde_json::from_slice(
            &final_status(Version::V4, &Err("no such container".into())).unwrap(),
        )
        .unwrap();
        assert_eq!(err["code"], 500);
        assert!(err["message"]
            .as_str()
            .unwrap()
            .contains("no such container"));
        assert_eq!(
            Version::from_protocol("v4.channel.k8s.io"),
            Some(Version::V4)
        );
        assert_eq!(Version::from_protocol("v9.channel.k8s.io"), None);
    }
}
