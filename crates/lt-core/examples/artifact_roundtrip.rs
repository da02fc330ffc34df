//! Writes a tiny artifact and reads it back: the pattern every stage uses.
use lt_core::{Artifact, ArtifactWriter, Format};

const DEMO: Format = Format { name: "demo.vector", version: 1 };

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join("lt-core-example");
    let path = dir.join("vector.safetensors");
    let values: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
    let mut w = ArtifactWriter::new(DEMO);
    w.meta("note", "written by the lt-core example").push_f32("values", &[8], values.as_slice());
    w.write(&path)?;

    let a = Artifact::open(&path, DEMO)?;
    println!("{}: note = {:?}, values = {:?}", path.display(), a.meta("note")?, a.f32("values")?);
    Ok(())
}
