//! The CUDA step's launches: which parameters each launch of `passes.cu`'s kernel updates, and
//! the table of their values and blocks it receives by value (pointers filled in by `cuda.rs`).
//! Plain data, so that its layout and its plan are tested on any machine.

use std::ops::Range;

/// Parameters one launch updates: `LT_SGD_TENSORS` in `passes.cu` (a test reads it there).
pub(super) const STEP_TENSORS: usize = 96;
/// Values each block of a launch updates: `LT_SGD_CHUNK` in `passes.cu` (a test reads it there).
pub(super) const STEP_CHUNK: usize = 8192;

/// The kernel's first parameter, `LtSgdTable` in `passes.cu`, field for field: device addresses
/// of each parameter, its gradient and its momentum buffer, its number of values, and the first
/// block of each (`first[count]` is the launch's number of blocks).
#[repr(C)]
#[derive(Clone, Debug)]
pub(super) struct StepTable {
    /// Parameters' device addresses.
    pub p: [u64; STEP_TENSORS],
    /// Gradients' device addresses.
    pub g: [u64; STEP_TENSORS],
    /// Momentum buffers' device addresses.
    pub buf: [u64; STEP_TENSORS],
    /// Values of each parameter.
    pub n: [u32; STEP_TENSORS],
    /// First block of each parameter, then the number of blocks.
    pub first: [u32; STEP_TENSORS + 1],
}

/// One launch: the parameters it updates (a range of the list given to [`step_launches`]), their
/// table without addresses, and its number of blocks.
#[derive(Debug)]
pub(super) struct StepLaunch {
    /// The parameters, in the order of the table's entries.
    pub items: Range<usize>,
    /// Sizes and blocks filled in; addresses 0.
    pub table: StepTable,
    /// Blocks of the launch (`table.first[items.len()]`).
    pub blocks: u32,
}

/// The launches that update parameters of `sizes` values, in order, at most [`STEP_TENSORS`]
/// each, every parameter in [`STEP_CHUNK`]-value blocks.
///
/// # Errors
/// A parameter of no values (the caller leaves those out: a block must have work) or of more
/// values than the kernel counts (`u32`).
pub(super) fn step_launches(sizes: &[usize]) -> Result<Vec<StepLaunch>, String> {
    let mut launches = Vec::with_capacity(sizes.len().div_ceil(STEP_TENSORS));
    for (i, group) in sizes.chunks(STEP_TENSORS).enumerate() {
        let start = i * STEP_TENSORS;
        let mut table = StepTable {
            p: [0; STEP_TENSORS],
            g: [0; STEP_TENSORS],
            buf: [0; STEP_TENSORS],
            n: [0; STEP_TENSORS],
            first: [0; STEP_TENSORS + 1],
        };
        let mut blocks = 0u32;
        for (k, &n) in group.iter().enumerate() {
            let values = u32::try_from(n).ok().filter(|&v| v > 0).ok_or_else(|| {
                format!("SGD step on CUDA: a parameter of {n} values (1..=2^32-1 expected)")
            })?;
            table.n[k] = values;
            table.first[k] = blocks;
            // At most 96 x 2^19 blocks, well within a grid.
            blocks += values.div_ceil(STEP_CHUNK as u32);
        }
        table.first[group.len()] = blocks;
        launches.push(StepLaunch { items: start..start + group.len(), table, blocks });
    }
    Ok(launches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The value `passes.cu` defines for `name`.
    fn defined(name: &str) -> usize {
        let source = include_str!("passes.cu");
        let line = source
            .lines()
            .find_map(|l| l.strip_prefix("#define ")?.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("passes.cu defines no {name}"));
        line.trim().parse().unwrap()
    }

    #[test]
    fn the_constants_and_the_table_are_the_kernels() {
        assert_eq!(defined("LT_SGD_TENSORS"), STEP_TENSORS);
        assert_eq!(defined("LT_SGD_CHUNK"), STEP_CHUNK);
        // LtSgdTable: three arrays of 8-byte pointers, then two of 4-byte unsigned ints, padded
        // to a multiple of 8; within the 4,096 bytes of a launch's parameters with the other five
        // (4 bytes each).
        let t = STEP_TENSORS;
        assert_eq!(offset_of!(StepTable, g), 8 * t);
        assert_eq!(offset_of!(StepTable, buf), 16 * t);
        assert_eq!(offset_of!(StepTable, n), 24 * t);
        assert_eq!(offset_of!(StepTable, first), 28 * t);
        assert_eq!(size_of::<StepTable>(), (32 * t + 4).next_multiple_of(8));
        assert!(size_of::<StepTable>() + 5 * 4 <= 4096);
    }

    #[test]
    fn launches_cover_every_value_once_in_order() {
        // Sizes around a block's, and more parameters than one launch takes.
        let mut sizes = vec![1, STEP_CHUNK - 1, STEP_CHUNK, STEP_CHUNK + 1, 3 * STEP_CHUNK + 17];
        sizes.extend((0..200).map(|i| 1 + (i * 37) % 300));
        let launches = step_launches(&sizes).unwrap();
        assert_eq!(launches.len(), 3);
        let mut next = 0;
        for l in &launches {
            assert_eq!(l.items.start, next);
            assert!(l.items.len() <= STEP_TENSORS && !l.items.is_empty());
            next = l.items.end;
            // Each block belongs to the parameter the kernel's search finds, and the blocks of
            // a parameter cover its values exactly.
            let count = l.items.len();
            let mut covered = vec![0usize; count];
            for b in 0..l.blocks {
                let k = (0..count).rev().find(|&k| l.table.first[k] <= b).unwrap();
                let start = (b - l.table.first[k]) as usize * STEP_CHUNK;
                let end = (start + STEP_CHUNK).min(l.table.n[k] as usize);
                assert!(start < end, "block {b} of parameter {k} has no values");
                covered[k] += end - start;
            }
            let expected: Vec<usize> = sizes[l.items.clone()].to_vec();
            assert_eq!(covered, expected);
            assert_eq!(l.table.first[count], l.blocks);
            assert!(l.table.p.iter().chain(&l.table.g).chain(&l.table.buf).all(|&a| a == 0));
        }
        assert_eq!(next, sizes.len());
        assert_eq!(launches[0].table.first[..6], [0, 1, 2, 3, 5, 9]);
    }

    /// One step on `check_shapes`' 100 parameters (two launches) with each of the settings of
    /// `check_in_place_passes`, by `passes.cu`'s kernel run on the host (`kernel_on_host.cpp`,
    /// built with `$CXX` or `c++`) on this module's launches, against the tensor ops: the same
    /// bits. The second step of each, so that the momentum buffers hold values.
    #[test]
    fn the_kernel_run_on_the_host_gives_the_tensor_ops_bits() {
        use super::super::{check_grads, check_params, check_shapes, Sgd, CHECK_SETTINGS};
        use candle_core::{Device, Tensor};
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("kernel_on_host");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/src/optim");
        let built = std::process::Command::new(&cxx)
            .args(["-O1", "-ffp-contract=off", "-I", here, &format!("{here}/kernel_on_host.cpp"), "-o"])
            .arg(&exe)
            .status()
            .unwrap_or_else(|e| panic!("this test needs a C++ compiler ({cxx}: {e}; set CXX)"));
        assert!(built.success(), "{cxx} could not build kernel_on_host.cpp");
        let shapes = check_shapes();
        let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        let launches = step_launches(&sizes).unwrap();
        assert_eq!(launches.len(), 2);
        for (momentum, nesterov, wd) in CHECK_SETTINGS {
            let params = check_params(&Device::Cpu).unwrap();
            let mut sgd = Sgd::new(momentum, nesterov, wd);
            sgd.step_with(&params, &check_grads(&params, 0).unwrap(), 0.1, false).unwrap();
            let g = check_grads(&params, 1).unwrap();
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut input: Vec<u8> = Vec::new();
            for v in [momentum as f32, wd as f32, 0.05f32] {
                input.extend(v.to_le_bytes());
            }
            input.extend(i32::from(nesterov).to_le_bytes());
            input.extend((launches.len() as u32).to_le_bytes());
            for l in &launches {
                let count = l.items.len();
                let words = [count as u32, l.blocks].into_iter().chain(l.table.n[..count].iter().copied());
                for w in words.chain(l.table.first[..=count].iter().copied()) {
                    input.extend(w.to_le_bytes());
                }
            }
            for (name, v) in &params {
                let (p, g, buf) = (v.as_tensor(), g.get(v.as_tensor()).unwrap(), &sgd.buffers()[name]);
                for x in [p, g, buf].into_iter().flat_map(values) {
                    input.extend(x.to_le_bytes());
                }
            }
            let (inp, out) = (dir.path().join("in"), dir.path().join("out"));
            std::fs::write(&inp, input).unwrap();
            let ran = std::process::Command::new(&exe).arg(&inp).arg(&out).status().unwrap();
            assert!(ran.success());
            let kernel = std::fs::read(&out).unwrap();
            sgd.step_with(&params, &g, 0.05, false).unwrap();
            let expected: Vec<u8> = params
                .iter()
                .flat_map(|(name, v)| [values(v.as_tensor()), values(&sgd.buffers()[name])])
                .flatten()
                .flat_map(f32::to_le_bytes)
                .collect();
            assert_eq!(kernel.len(), expected.len());
            let differing = kernel.chunks(4).zip(expected.chunks(4)).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "momentum {momentum}, Nesterov {nesterov}, wd {wd}");
        }
    }

    #[test]
    fn an_empty_or_oversized_parameter_is_refused() {
        assert!(step_launches(&[]).unwrap().is_empty());
        let e = step_launches(&[4, 0]).unwrap_err();
        assert!(e.contains("a parameter of 0 values"), "{e}");
        let e = step_launches(&[1 << 32]).unwrap_err();
        assert!(e.contains("4294967296 values"), "{e}");
    }
}
