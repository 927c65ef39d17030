//! The `tribe` command line. Parses flags, opens the workspace, calls the library, prints.
//! Errors are rendered here, as one line on stderr.

mod cli;
mod cli_export;
mod cli_privacy;
mod cli_segment;
mod cli_serve;
mod cli_traits;

fn main() -> std::process::ExitCode {
    tribe::tune_allocator();
    cli::main()
}
