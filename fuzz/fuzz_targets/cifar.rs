//! The CIFAR binary reader: `parse_records` on arbitrary bytes and record counts, and
//! `load_archive` on a `.tar.gz` that is either the raw input, the input gzipped (a fuzzed tar
//! stream), or an archive of CIFAR member names with fuzzed contents.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lt_data::cifar::{load_archive, parse_records, CifarVariant};

const MEMBERS: [&str; 6] = [
    "data_batch_1.bin",
    "test_batch.bin",
    "batches.meta.txt",
    "train.bin",
    "test.bin",
    "fine_label_names.txt",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let variant = if mode & 0x80 != 0 { CifarVariant::Cifar100 } else { CifarVariant::Cifar10 };
    match mode & 3 {
        0 => {
            // A record count from the input: small, or anywhere in usize (overflow of count * len).
            let (head, body) = rest.split_at(rest.len().min(8));
            let mut n = [0u8; 8];
            n[..head.len()].copy_from_slice(head);
            let records = if mode & 0x40 != 0 { u64::from_le_bytes(n) as usize } else { n[0] as usize };
            if let Ok((pixels, labels)) = parse_records(body, variant, records, Path::new("fuzz.bin")) {
                assert_eq!(pixels.len(), labels.len() * 3072);
                assert_eq!(labels.len(), records);
            }
        }
        1 => {
            let p = srepr_fuzz::scratch_file("raw.tar.gz", rest);
            let _ = load_archive(&p, variant);
        }
        2 => {
            let p = srepr_fuzz::scratch_file("tar.tar.gz", &srepr_fuzz::gzip(rest));
            let _ = load_archive(&p, variant);
        }
        _ => {
            // Members named like CIFAR's, contents cut from the input.
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut ar = tar::Builder::new(gz);
            let mut rest = rest;
            let mut i = 0;
            while !rest.is_empty() && i < 8 {
                let (body, tail) = srepr_fuzz::split2(rest);
                let name = format!("cifar-batches/{}", MEMBERS[(rest[0] as usize) % MEMBERS.len()]);
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                ar.append_data(&mut h, name, body).expect("in memory");
                rest = tail;
                i += 1;
            }
            let bytes = ar.into_inner().expect("in memory").finish().expect("in memory");
            let p = srepr_fuzz::scratch_file("members.tar.gz", &bytes);
            let _ = load_archive(&p, variant);
        }
    }
});
