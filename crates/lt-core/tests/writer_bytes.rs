//! The artifact writer's output is pinned byte for byte: a file written with every pusher must
//! equal `fixtures/every_pusher.safetensors`, which was produced by the writer before its
//! refactoring. Regenerate it only for an intended format change: `LT_BLESS=1 cargo test -p lt-core
//! --test writer_bytes`.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use half::f16;
use lt_core::artifact::ElemType;
use lt_core::{ArtifactWriter, Format};

const FMT: Format = Format { name: "lt.pinned", version: 3 };

#[derive(serde::Serialize)]
struct Nested {
    name: String,
    values: Vec<f64>,
    flag: bool,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/every_pusher.safetensors")
}

fn write_every_pusher(path: &std::path::Path) {
    let f32s = [1.5f32, -2.25, 0.0, f32::MAX, f32::MIN_POSITIVE, 3.0];
    let f16s: Vec<f16> = [0.5f32, -1.0, 65504.0].iter().map(|&x| f16::from_f32(x)).collect();
    let dev = Device::Cpu;
    let t32 = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev).unwrap();
    let mut w = ArtifactWriter::new(FMT);
    w.meta("plain", "value with ünïcödé and \"quotes\"")
        .meta_json("nested", &Nested { name: "n".into(), values: vec![0.1, 1e300], flag: true })
        .meta(lt_core::artifact::KEY_FINGERPRINT, "00ff");
    w.push_f32("a.f32.borrowed", &[2, 3], f32s.as_slice())
        .push_f32("b.f32.owned", &[3], vec![7.0f32, 8.0, 9.0])
        .push_f16("c.f16", &[3], f16s)
        .push_u32("d.u32", &[2, 2], vec![0u32, 1, u32::MAX, 42])
        .push_i64("e.i64", &[3], vec![-1i64, i64::MAX, 0])
        .push_u8("f.u8", &[5], b"bytes".as_slice())
        .push_f32("g.empty", &[0, 4], Vec::new());
    for (name, dt) in [
        ("t.f32", DType::F32),
        ("t.f16", DType::F16),
        ("t.bf16", DType::BF16),
        ("t.f64", DType::F64),
        ("t.i64", DType::I64),
        ("t.u32", DType::U32),
        ("t.u8", DType::U8),
    ] {
        w.push_tensor(name, &t32.to_dtype(dt).unwrap()).unwrap();
    }
    w.push_lazy("z.lazy", ElemType::F32, &[2, 2], |out| {
        for i in 0..4 {
            out.write_all(&(i as f32 * 0.5).to_le_bytes())?;
        }
        Ok(())
    });
    w.write(path).unwrap();
}

#[test]
fn every_pusher_writes_the_pinned_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");
    write_every_pusher(&path);
    let written = std::fs::read(&path).unwrap();
    if std::env::var_os("LT_BLESS").is_some() {
        std::fs::write(fixture(), &written).unwrap();
    }
    let pinned = std::fs::read(fixture()).unwrap();
    assert_eq!(written.len(), pinned.len(), "artifact length changed");
    assert!(written == pinned, "artifact bytes changed");
    // The pinned file is itself a valid safetensors file.
    let st = safetensors::SafeTensors::deserialize(&pinned).unwrap();
    assert_eq!(st.len(), 15);
}
