//! containerd-shim-berth-vm-v2: the `vm` runtime class, each pod in a
//! microVM of its own (see berth-shim's `vm` module).

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match berth_shim::Args::parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-berth-vm-v2: {e}");
            std::process::exit(1);
        }
    };
    berth_shim::logger::init(args.debug);
    let result = match args.action.as_deref() {
        Some("start") => berth_shim::start::start(&args).map(|address| print!("{address}")),
        Some("delete") => berth_shim::start::delete_vm(&args),
        Some(other) => Err(berth_shim::ShimError::InvalidArgument(format!(
            "unknown action {other:?}"
        ))),
        None => berth_shim::start::serve_class(&args, berth_shim::Class::Vm),
    };
    if let Err(e) = result {
        eprintln!("containerd-shim-berth-vm-v2: {e}");
        std::process::exit(1);
    }
}
