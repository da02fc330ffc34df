//! The IDX reader: `parse_idx` on raw and gzipped bytes, and `load_pair` on two files.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lt_data::idx::{load_pair, parse_idx};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let ndim = 1 + (mode as usize >> 2) % 4;
    match mode & 3 {
        // The bytes as given (the fuzzer may produce a gzip header itself).
        0 => {
            if let Ok(a) = parse_idx(rest, ndim, Path::new("fuzz.idx")) {
                assert_eq!(a.dims.len(), ndim);
                assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
            }
        }
        // Gzipped by the harness, so that the fuzzer mutates the IDX content behind a valid gzip.
        1 => {
            let _ = parse_idx(&srepr_fuzz::gzip(rest), ndim, Path::new("fuzz.idx.gz"));
        }
        // An images file and a labels file, each maybe gzipped.
        _ => {
            let (images, labels) = srepr_fuzz::split2(rest);
            let (images, labels) = if mode & 0x40 != 0 {
                (srepr_fuzz::gzip(images), srepr_fuzz::gzip(labels))
            } else {
                (images.to_vec(), labels.to_vec())
            };
            let ip = srepr_fuzz::scratch_file("images-idx3-ubyte", &images);
            let lp = srepr_fuzz::scratch_file("labels-idx1-ubyte", &labels);
            let names: Vec<String> = (0..1 + (mode as usize >> 4) % 12).map(|c| c.to_string()).collect();
            if let Ok(set) = load_pair(&ip, &lp, names) {
                assert_eq!(set.labels.len() * set.height * set.width, set.pixels.len());
                assert!(set.labels.iter().all(|&y| (y as usize) < set.num_classes));
            }
        }
    }
});
