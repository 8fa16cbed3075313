//! The `blocksnap` binary.

fn main() -> std::process::ExitCode {
    blocksnap_cli::main()
}
