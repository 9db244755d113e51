//! The `berthctl` binary: see the library for the commands.

fn main() {
    std::process::exit(berthctl::main());
}
