//! Compiles `alldocs/v1/alldocs.proto` with protox (pure Rust, no system `protoc`) and
//! writes the descriptor set that server reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "alldocs/v1/alldocs.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("alldocs_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `coordinator status --json` prints Progress with the proto's field names.
        .type_attribute(".alldocs.v1.Progress", "#[derive(serde::Serialize)]")
        .field_attribute(
            ".alldocs.v1.Progress.state",
            "#[serde(serialize_with = \"crate::serialize_run_state\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}
