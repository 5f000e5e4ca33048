//! Writes the `StreamJob` CRD: to `crds/streamjob.yaml` by default, or to stdout with `-`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let yaml = sluice_crds::crd_yaml();
    match std::env::args().nth(1).as_deref() {
        Some("-") => print!("{yaml}"),
        Some(path) => std::fs::write(path, yaml)?,
        None => {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("streamjob.yaml");
            std::fs::write(&path, yaml)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
