//! Generates the bsfg.v1 contract from `proto/` with a vendored protoc, so a
//! build needs nothing from the system package manager.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    connectrpc_build::Config::new()
        .files(&[
            "../../proto/bsfg/v1/boundary.proto",
            "../../proto/bsfg/v1/operations.proto",
        ])
        .includes(&["../../proto"])
        .include_file("_connectrpc.rs")
        .compile()
        .expect("generate bsfg.v1");
}
