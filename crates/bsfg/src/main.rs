fn main() -> std::process::ExitCode {
    bsfg::cli::main()
}
