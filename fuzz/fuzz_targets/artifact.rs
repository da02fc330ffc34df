//! The artifact reader on arbitrary bytes: `Artifact::open_any` / `open` and every typed
//! accessor on every tensor and metadata key, then `SplitInfo::read`. Never a panic; every
//! failure a typed error naming the file.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use lt_core::artifact::{Artifact, Format};
use lt_core::split::{SplitInfo, SPLIT_FORMAT};

fuzz_target!(|data: &[u8]| {
    let path = srepr_fuzz::scratch_file("a.safetensors", data);
    let named = |e: &lt_core::ArtifactError| srepr_fuzz::assert_names_file(e, "a.safetensors");
    match Artifact::open_any(&path) {
        Err(e) => named(&e),
        Ok(a) => {
            let _ = a.check_format(Format { name: "lt.split", version: 1 });
            let keys: Vec<String> = a.metadata().keys().cloned().collect();
            for k in &keys {
                let _ = a.meta(k);
                let _ = a.meta_parse::<usize>(k).map_err(|e| named(&e));
                let _ = a.meta_parse::<f64>(k);
                let _ = a.meta_json::<serde_json::Value>(k).map_err(|e| named(&e));
                let _ = a.meta_json::<Vec<String>>(k);
                let _ = a.bad_meta(k, "fuzz").to_string();
            }
            let names: Vec<String> = a.names().map(str::to_string).collect();
            for n in &names {
                let info = a.info(n).expect("listed tensor").clone();
                let _ = info.numel();
                let _ = a.bytes(n);
                let _ = a.f32(n).map_err(|e| named(&e));
                let _ = a.i64(n).map_err(|e| named(&e));
                for bound in [0, 1, 7, usize::MAX] {
                    let _ = a.indices(n, bound).map_err(|e| named(&e));
                }
                let mut shape: Vec<Option<usize>> = info.shape.iter().map(|&d| Some(d)).collect();
                a.expect_shape(n, &shape).expect("its own shape");
                shape.push(None);
                let _ = a.expect_shape(n, &shape).map_err(|e| named(&e));
                let _ = a.expect_shape(n, &[Some(3), None]);
                let _ = a.tensor(n, &Device::Cpu).map_err(|e| named(&e));
            }
            let _ = a.info("missing").map_err(|e| named(&e));
        }
    }
    let _ = Artifact::open(&path, SPLIT_FORMAT).map_err(|e| named(&e));
    if let Ok(split) = SplitInfo::read(&path) {
        // A split that reads back is consistent.
        assert_eq!(split.train_labels.len(), split.train_indices.len());
        let _ = split.class_counts();
        let _ = split.groups();
    }
});
