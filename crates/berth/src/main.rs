//! berth: an OCI runtime with runc's command line.

mod args;
mod commands;
mod logger;
mod manage;

use std::path::PathBuf;

use berth_runtime::Runtime;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let global = match args::parse(&argv, commands::GLOBAL_FLAGS, Some(1)) {
        Ok(g) => g,
        Err(e) => {
            logger::early_fatal(&e.to_string());
            return 1;
        }
    };
    if global.is_set("version") {
        print!("{}", commands::version());
        return 0;
    }
    let Some((command, rest)) = global.positionals.split_first() else {
        print!("{}", commands::USAGE);
        return if global.is_set("help") { 0 } else { 1 };
    };
    if global.is_set("help") || rest.iter().any(|a| a == "--help" || a == "-h") && command != "exec"
    {
        print!("{}", commands::USAGE);
        return 0;
    }
    let format = match global.get("log-format").unwrap_or("text") {
        "text" => logger::Format::Text,
        "json" => logger::Format::Json,
        other => {
            logger::early_fatal(&format!("invalid log-format: {other}"));
            return 1;
        }
    };
    let logger = match logger::Logger::install(global.get("log"), format, global.is_set("debug")) {
        Ok(l) => l,
        Err(e) => {
            logger::early_fatal(&error_text(&e));
            return 1;
        }
    };
    if commands::seals_up_front(command) {
        if let Err(e) = berth_runtime::cloned_exe::ensure_sealed() {
            logger.fatal(&e.to_string());
            return 1;
        }
    }
    let runtime = Runtime {
        root: PathBuf::from(global.get("root").unwrap_or("/run/berth")),
        systemd_cgroup: global.is_set("systemd-cgroup"),
    };
    match commands::dispatch(&runtime, command, rest) {
        Ok(code) => code,
        Err(e) => {
            logger.fatal(&error_text(&e));
            e.downcast_ref::<commands::Exit>()
                .map_or(1, |exit| exit.code)
        }
    }
}

/// The error and its causes on one line, like `{:#}`, but a cause whose text
/// its wrapper already ends with (library errors name their source in their
/// message) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    /// An error that names its source in its own message, as the libraries'
    /// `#[error("...: {source}")]` errors do.
    #[derive(Debug)]
    struct Write(std::io::Error);

    impl std::fmt::Display for Write {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "setting /sys/fs/cgroup/x/f to \"1\": {}", self.0)
        }
    }

    impl std::error::Error for Write {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let e = anyhow::Error::new(Write(std::io::Error::from_raw_os_error(2)))
            .context("applying resources");
        assert_eq!(
            super::error_text(&e),
            "applying resources: setting /sys/fs/cgroup/x/f to \"1\": No such file or directory (os error 2)"
        );
        let plain = anyhow::anyhow!("bad").context("outer");
        assert_eq!(super::error_text(&plain), "outer: bad");
    }
}
