//! Generates the gRPC code from `dynamo/v1/*.proto` with a vendored `protoc`, so that the
//! build needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded; nothing else reads the environment concurrently.
    std::env::set_var("PROTOC", protoc);
    let files = [
        "dynamo/v1/kv.proto",
        "dynamo/v1/admin.proto",
        "dynamo/v1/replica.proto",
        "dynamo/v1/antientropy.proto",
        "dynamo/v1/gossip.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // Replica messages carry keys and encoded sibling sets as `Bytes`: one encoding is
    // shared by every peer a write goes to, and decoding slices the request buffer.
    tonic_prost_build::configure()
        .bytes(".dynamo.v1.ReplicaReadRequest")
        .bytes(".dynamo.v1.ReplicaReadResponse")
        .bytes(".dynamo.v1.ReplicaEntry")
        .bytes(".dynamo.v1.LeafKey")
        .compile_protos(&files, &["."])?;
    Ok(())
}
