//! Writes the CRD generated from the Rust types into `crds/` and the Helm chart.
//! Run from anywhere: paths are resolved against the workspace root.
use std::path::Path;

use dynamo_operator::crdgen::{chart_crd_template, crd_yaml, CHART_CRD_PATH, CRD_PATH};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (path, text) in [
        (CRD_PATH, crd_yaml()),
        (CHART_CRD_PATH, chart_crd_template()),
    ] {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("file has a parent"))?;
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
