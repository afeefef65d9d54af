//! The `postern` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    postern::cli::main()
}
