//! Generates the tiny echo service used as the "bare RPC stack" baseline.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    connectrpc_build::Config::new()
        .files(&["proto/bench/v1/echo.proto"])
        .includes(&["proto"])
        .include_file("_connectrpc.rs")
        .compile()
        .expect("generate bench.v1");
    println!("cargo:rerun-if-changed=proto/bench/v1/echo.proto");
}
