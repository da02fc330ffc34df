//! Tests of the kernel sets: the portable reference against direct sums, every SIMD set this CPU
//! has against the portable one (a set the CPU lacks is skipped loudly), and the selection.

use super::check::{agrees_with_portable, data};
use super::*;

#[test]
fn the_portable_gather_is_the_sum_over_taps_then_the_epilogue() {
    let (mr, nb, depth) = (3, 1, 4);
    let nr = nb * 8;
    let src = data(2 * MR_MAX * depth, 11);
    let packed = data(2 * depth * nr, 12);
    let bias = data(nr, 13);
    let residual = data(MR_MAX * nr, 14);
    let taps: Vec<Tap> = (0..2)
        .map(|t| Tap { src: std::array::from_fn(|j| src[(t * MR_MAX + j) * depth..].as_ptr()), w: t * depth })
        .collect();
    let old = data(MR_MAX * nr, 15);
    let mut out = old.clone();
    // Every row's pointer from one base pointer (see `check::gather_agrees`).
    let base = out.as_mut_ptr();
    let args = GatherArgs {
        taps: &taps,
        depth,
        packed: packed.as_ptr(),
        out: std::array::from_fn(|j| base.wrapping_add(j * nr)),
        accumulate: true,
        epilogue: Epilogue {
            bias: bias.as_ptr(),
            residual: Some(std::array::from_fn(|j| residual[j * nr..].as_ptr())),
            relu: true,
        },
    };
    // SAFETY: every pointer covers the extents the block reads and writes.
    unsafe { portable::gather(&args, mr, nb) };
    let mut relu_zeroed = 0;
    for j in 0..MR_MAX {
        for l in 0..nr {
            let got = out[j * nr + l];
            if j >= mr {
                assert_eq!(got, old[j * nr + l], "row {j} is outside the block");
                continue;
            }
            let mut s = 0f32;
            for t in 0..2 {
                for c in 0..depth {
                    s += src[(t * MR_MAX + j) * depth + c] * packed[(t * depth + c) * nr + l];
                }
            }
            let want = (old[j * nr + l] + s + bias[l] + residual[j * nr + l]).max(0.0);
            relu_zeroed += usize::from(want == 0.0);
            assert!((got - want).abs() < 1e-5, "row {j} column {l}: {got} vs {want}");
        }
    }
    assert!(relu_zeroed > 0 && relu_zeroed < mr * nr, "the data exercises both sides of the ReLU");
}

#[test]
fn every_simd_set_of_this_cpu_matches_the_portable_reference() {
    let mut ran = 0;
    for (name, set) in simd_sets() {
        match set {
            Some(set) => {
                agrees_with_portable(&set).unwrap();
                ran += 1;
            }
            None => eprintln!(
                "SKIPPED the {name} kernels: this CPU lacks them ({}); they are untested here",
                cpu_features().join(" ")
            ),
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert!(ran >= 1, "AVX2 + FMA detected but no SIMD set was checked");
    }
    // The portable set agrees with itself trivially; check it runs every width anyway.
    agrees_with_portable(&PORTABLE).unwrap();
    eprintln!("{ran} SIMD kernel set(s) checked");
}

#[test]
fn the_widest_available_set_is_selected_unless_one_is_forced() {
    if std::env::var_os("LT_KERNELS").is_some() {
        eprintln!("SKIPPED the selection test: LT_KERNELS is set");
        return;
    }
    let widest = simd_sets().into_iter().find_map(|(_, s)| s).map_or("portable", |s| s.name());
    assert_eq!(kernel_name(), widest);
}
