//! containerd-shim-berth-v2: see the berth-shim crate.

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match berth_shim::Args::parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-berth-v2: {e}");
            std::process::exit(1);
        }
    };
    berth_shim::logger::init(args.debug);
    let result = match args.action.as_deref() {
        Some("start") => berth_shim::start::start(&args).map(|address| print!("{address}")),
        Some("delete") => berth_shim::start::delete(&args),
        Some(other) => Err(berth_shim::ShimError::InvalidArgument(format!(
            "unknown action {other:?}"
        ))),
        None => berth_shim::start::serve(&args),
    };
    if let Err(e) = result {
        eprintln!("containerd-shim-berth-v2: {e}");
        std::process::exit(1);
    }
}
