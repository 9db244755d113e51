//! logrus lines, as runc and containerd's shims write their logs.

use std::time::SystemTime;

/// One logrus line: text (`time="..." level=warning msg="..."`) or JSON.
pub fn logrus_line(level: log::Level, msg: &str, json: bool) -> String {
    let level = match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    let time = crate::time::rfc3339(SystemTime::now());
    let msg = serde_json::to_string(msg).unwrap_or_default();
    if json {
        format!("{{\"level\":\"{level}\",\"msg\":{msg},\"time\":\"{time}\"}}\n")
    } else {
        format!("time=\"{time}\" level={level} msg={msg}\n")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_and_json() {
        let text = super::logrus_line(log::Level::Warn, "a \"b\"", false);
        assert!(text.starts_with("time=\""), "{text}");
        assert!(
            text.ends_with(" level=warning msg=\"a \\\"b\\\"\"\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&super::logrus_line(log::Level::Error, "x", true)).unwrap();
        assert_eq!(json["level"], "error");
        assert_eq!(json["msg"], "x");
    }
}
