//! Generates the gRPC code of the spec app from `proto/` with a pure-Rust protobuf
//! compiler (protox), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/statsig_forward_proxy.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        // One shared buffer per spec version, sent to every stream.
        .bytes(".statsig_forward_proxy.ConfigSpecResponse.spec")
        .compile_fds(fds)?;
    Ok(())
}
