//! The blocksnap CLI, built inside the test package so the tests can run it.

fn main() -> std::process::ExitCode {
    blocksnap_cli::main()
}
