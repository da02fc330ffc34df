//! The split list-file reader (`<relative path> <label>` per line) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lt_data::listfile::parse_list;

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else { return };
    let classes = match c {
        0 => 0,
        255 => usize::MAX,
        c => c as usize,
    };
    let p = srepr_fuzz::scratch_file("list.txt", rest);
    match parse_list(&p, classes) {
        Ok(entries) => {
            assert!(!entries.is_empty());
            assert!(entries.iter().all(|e| (e.label as usize) < classes));
        }
        Err(e) => assert!(e.to_string().contains("list.txt"), "{e}"),
    }
});
