//! SWAG moments, sampling covariance, artifacts.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lt_core::Rng;
use lt_swag::{ParamLayout, Swag};

fn varmap(entries: &[(&str, Vec<f32>, Vec<usize>)]) -> VarMap {
    let vm = VarMap::new();
    for (n, v, s) in entries {
        let t = Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap();
        vm.data().lock().unwrap().insert(n.to_string(), Var::from_tensor(&t).unwrap());
    }
    vm
}

#[test]
fn layout_is_sorted_and_skips_batch_norm_statistics() {
    let vm = varmap(&[
        ("b.weight", vec![1.0, 2.0], vec![2]),
        ("a.weight", vec![3.0; 4], vec![2, 2]),
        ("a.running_mean", vec![0.0; 2], vec![2]),
        ("a.running_var", vec![1.0; 2], vec![2]),
    ]);
    let l = ParamLayout::of(&vm).unwrap();
    assert_eq!(l.names, vec!["a.weight", "b.weight"]);
    assert_eq!(l.flatten(&vm).unwrap(), vec![3.0, 3.0, 3.0, 3.0, 1.0, 2.0]);
    l.write_into(&vm, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    assert_eq!(l.flatten(&vm).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert!(l.write_into(&vm, &[0.0]).is_err());
    let other = varmap(&[("a.weight", vec![3.0; 6], vec![2, 3]), ("b.weight", vec![1.0, 2.0], vec![2])]);
    let err = l.check(&other).unwrap_err().to_string();
    assert!(err.contains("a.weight") && err.contains("[2, 3]"), "{err}");
}

#[test]
fn moments_and_deviations_by_hand() {
    let l = ParamLayout { names: vec!["p".into()], shapes: vec![vec![2]] };
    let mut s = Swag::new(l, 2);
    s.collect(&[1.0, 2.0]).unwrap();
    s.collect(&[3.0, 2.0]).unwrap();
    s.collect(&[5.0, 8.0]).unwrap();
    // mean = (1+3+5)/3, (2+2+8)/3; second moment = (1+9+25)/3, (4+4+64)/3
    assert_eq!(s.n_models(), 3);
    assert!((s.mean()[0] - 3.0).abs() < 1e-6 && (s.mean()[1] - 4.0).abs() < 1e-6);
    assert!((s.sq_mean()[0] - 35.0 / 3.0).abs() < 1e-5 && (s.sq_mean()[1] - 24.0).abs() < 1e-5);
    let var = s.variance();
    assert!((var[0] - (35.0 / 3.0 - 9.0)).abs() < 1e-5 && (var[1] - 8.0).abs() < 1e-5);
    // FIFO of K = 2: deviations after models 2 and 3, each against the updated mean.
    let d: Vec<&[f32]> = s.deviations().collect();
    assert_eq!(d.len(), 2);
    assert!((d[0][0] - (3.0 - 2.0)).abs() < 1e-6 && (d[0][1] - 0.0).abs() < 1e-6);
    assert!((d[1][0] - (5.0 - 3.0)).abs() < 1e-6 && (d[1][1] - 4.0).abs() < 1e-6);
    // Diagonal-only mode keeps no deviations; variance is clamped at 1e-30.
    let mut diag = Swag::new(ParamLayout { names: vec!["p".into()], shapes: vec![vec![1]] }, 0);
    diag.collect(&[2.0]).unwrap();
    assert_eq!(diag.rank(), 0);
    assert_eq!(diag.variance(), vec![1e-30]);
    assert_eq!(diag.sample(0.0, &mut Rng::new(0)).unwrap(), vec![2.0]);
}

/// Sampling before any model, a negative or non-finite scale, and a model with a NaN are
/// refused by name (they gave all-zero weights, NaN weights, and a NaN mean); a refused model
/// changes nothing.
#[test]
fn sampling_and_collecting_refuse_what_describes_no_posterior() {
    let layout = ParamLayout { names: vec!["a".into(), "b".into()], shapes: vec![vec![2], vec![3]] };
    let mut s = Swag::new(layout, 4);
    let err = s.sample(0.5, &mut Rng::new(0)).unwrap_err().to_string();
    assert!(err.contains("no model collected yet"), "{err}");
    s.collect(&[1.0; 5]).unwrap();
    for scale in [-0.5, f64::NAN, f64::INFINITY] {
        let err = s.sample(scale, &mut Rng::new(0)).unwrap_err().to_string();
        assert!(err.contains(&format!("sample scale {scale}: expected a finite value >= 0")), "{err}");
    }
    let err = s.collect(&[1.0, 1.0, 1.0, f32::NAN, 1.0]).unwrap_err().to_string();
    assert!(err.contains("model 2 to collect has NaN at value 3, parameter b element 1"), "{err}");
    let err = s.collect(&[1.0, f32::INFINITY, 1.0, 1.0, 1.0]).unwrap_err().to_string();
    assert!(err.contains("has inf at value 1, parameter a element 1"), "{err}");
    assert_eq!((s.n_models(), s.mean()), (1, &[1.0f32; 5][..]));
}

#[test]
fn sample_covariance_matches_the_implied_covariance() {
    // P = 3 parameters, K = 6 with 4 columns collected: the low-rank term divides by
    // sqrt(K - 1) = sqrt(5), the maximum rank, not by the number of columns (reference sheet).
    let l = ParamLayout { names: vec!["p".into()], shapes: vec![vec![3]] };
    let mut s = Swag::new(l, 6);
    for theta in [[0.0f32, 1.0, 2.0], [1.0, -1.0, 2.5], [0.5, 0.0, 1.0], [2.0, 1.0, 0.0]] {
        s.collect(&theta).unwrap();
    }
    let scale = 0.5;
    let var = s.variance();
    let d: Vec<Vec<f32>> = s.deviations().map(|c| c.to_vec()).collect();
    assert_eq!((d.len(), s.max_rank()), (4, 6));
    let mut want = [[0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let mut c = if i == j { var[i] as f64 } else { 0.0 };
            for col in &d {
                c += col[i] as f64 * col[j] as f64 / 5.0;
            }
            want[i][j] = scale * c;
        }
    }
    let mut rng = Rng::new(42);
    let n = 200_000;
    let mut sum = [0f64; 3];
    let mut prod = [[0f64; 3]; 3];
    for _ in 0..n {
        let x = s.sample(scale, &mut rng).unwrap();
        for i in 0..3 {
            sum[i] += x[i] as f64;
            for j in 0..3 {
                prod[i][j] += x[i] as f64 * x[j] as f64;
            }
        }
    }
    for i in 0..3 {
        let mi = sum[i] / n as f64;
        assert!((mi - s.mean()[i] as f64).abs() < 0.01, "mean {i}");
        for j in 0..3 {
            let cov = prod[i][j] / n as f64 - mi * sum[j] / n as f64;
            let tol = 0.02 * (want[i][i] * want[j][j]).sqrt() + 1e-4;
            assert!((cov - want[i][j]).abs() < tol, "cov[{i}][{j}] = {cov}, expected {}", want[i][j]);
        }
    }
    // Same seed, same sample.
    assert_eq!(s.sample(scale, &mut Rng::new(1)).unwrap(), s.sample(scale, &mut Rng::new(1)).unwrap());
}

/// One draw against the reference sheet's formula with the same random numbers (`z1` over the
/// parameters first, then `z2` over the collected columns): the signs, the scale and the divisor
/// are the formula's, which the covariance alone cannot tell (a sign flip keeps it). With rank 0
/// the draw is the diagonal part alone.
#[test]
fn a_draw_is_the_formula_on_the_same_random_numbers() {
    let l = ParamLayout { names: vec!["p".into()], shapes: vec![vec![3]] };
    let thetas = [[0.0f32, 1.0, 2.0], [1.0, -1.0, 2.5], [0.5, 0.0, 1.0], [2.0, 1.0, 0.0]];
    for max_rank in [0usize, 6] {
        let mut s = Swag::new(l.clone(), max_rank);
        for theta in thetas {
            s.collect(&theta).unwrap();
        }
        let scale = 0.5f64;
        let got = s.sample(scale, &mut Rng::new(9)).unwrap();
        let mut rng = Rng::new(9);
        let (mut z1, mut z2) = (vec![0f32; 3], vec![0f32; s.rank()]);
        rng.fill_normal(&mut z1, 0.0, 1.0);
        rng.fill_normal(&mut z2, 0.0, 1.0);
        let cols: Vec<Vec<f32>> = s.deviations().map(|c| c.to_vec()).collect();
        assert_eq!(cols.len(), if max_rank == 0 { 0 } else { 4 });
        for i in 0..3 {
            let low: f64 = cols.iter().zip(&z2).map(|(c, &z)| c[i] as f64 * z as f64).sum::<f64>();
            let low = if max_rank > 1 { low / ((max_rank - 1) as f64).sqrt() } else { 0.0 };
            let want =
                s.mean()[i] as f64 + scale.sqrt() * ((s.variance()[i] as f64).sqrt() * z1[i] as f64 + low);
            assert!(
                (got[i] as f64 - want).abs() < 1e-5,
                "K = {max_rank}, parameter {i}: {} against {want}",
                got[i]
            );
        }
        assert_ne!(got, s.mean(), "a draw at scale 0.5 moves");
        assert_eq!(s.sample(0.0, &mut Rng::new(9)).unwrap(), s.mean(), "scale 0 is the mean");
    }
}

#[test]
fn artifact_roundtrip_and_refusals() {
    let l = ParamLayout { names: vec!["a".into(), "b.w".into()], shapes: vec![vec![2, 2], vec![3]] };
    let mut s = Swag::new(l, 3);
    let mut r = Rng::new(0);
    for _ in 0..5 {
        let mut t = vec![0f32; 7];
        r.fill_normal(&mut t, 0.0, 1.0);
        s.collect(&t).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("swag.safetensors");
    s.save(&p, &[("arch", "toy".into())]).unwrap();
    let back = Swag::load(&p).unwrap();
    assert_eq!(back, s);
    let a = lt_core::Artifact::open(&p, lt_swag::SWAG_FORMAT).unwrap();
    assert_eq!(a.info("deviations.a").unwrap().shape, vec![3, 2, 2]);
    assert_eq!(a.meta("arch").unwrap(), "toy");

    // A truncated file and a file of another kind.
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    assert!(Swag::load(&cut).unwrap_err().to_string().contains("cut.safetensors"));
    let vm = varmap(&[("a", vec![0.0; 4], vec![2, 2])]);
    let err = back.layout().check(&vm).unwrap_err().to_string();
    assert!(err.contains("b.w"), "{err}");
    let _ = DType::F32;
}

/// Statistics whose recorded layout and rank claim more than the file holds are refused before
/// anything is allocated (they used to reserve the claimed sizes first: terabytes from a few
/// hundred bytes).
#[test]
fn recorded_sizes_are_checked_against_the_tensors_first() {
    let dir = tempfile::tempdir().unwrap();
    let write_counts = |name: &str, layout: &str, [n_models, max_rank, rank]: [&str; 3]| {
        let p = dir.path().join(name);
        let mut w = lt_core::ArtifactWriter::new(lt_swag::SWAG_FORMAT);
        w.meta("layout", layout).meta("n_models", n_models).meta("max_rank", max_rank).meta("rank", rank);
        w.write(&p).unwrap();
        Swag::load(&p).unwrap_err().to_string()
    };
    let write = |name: &str, layout: &str, rank: &str| write_counts(name, layout, [rank; 3]);
    // More columns than K, or than models collected, is no SWAG's record.
    for counts in [["5", "3", "4"], ["2", "3", "3"]] {
        let err = write_counts("rank.safetensors", r#"{"names":[],"shapes":[]}"#, counts);
        assert!(err.contains(&format!("{} columns with K = {}", counts[2], counts[1])), "{counts:?}: {err}");
    }
    let huge = write("huge.safetensors", r#"{"names":["w"],"shapes":[[4000000000000]]}"#, "0");
    assert!(huge.contains("huge.safetensors") && huge.contains("mean.w"), "{huge}");
    let columns = write("columns.safetensors", r#"{"names":[],"shapes":[]}"#, "1000000000000000");
    assert!(columns.contains("columns of no parameters"), "{columns}");
    // A parameter without elements is a layout a model may have: it saves and loads.
    let l = ParamLayout { names: vec!["empty".into(), "w".into()], shapes: vec![vec![0, 3], vec![2]] };
    let mut s = Swag::new(l, 2);
    s.collect(&[1.0, 2.0]).unwrap();
    let p = dir.path().join("zero-size.safetensors");
    s.save(&p, &[]).unwrap();
    assert_eq!(Swag::load(&p).unwrap(), s);
    let twice = write("twice.safetensors", r#"{"names":["w","w"],"shapes":[[1],[1]]}"#, "0");
    assert!(twice.contains("`w` twice"), "{twice}");
    let unpaired = write("unpaired.safetensors", r#"{"names":["w"],"shapes":[]}"#, "0");
    assert!(unpaired.contains("1 names for 0 shapes"), "{unpaired}");
}

/// A NaN or infinity in any of the moments' or deviations' tensors is refused on load, naming
/// the file, the tensor and the element (a deviation's used to pass, and reached every sampled
/// backbone).
#[test]
fn non_finite_statistics_are_refused_by_tensor() {
    let l = ParamLayout { names: vec!["a".into(), "b.w".into()], shapes: vec![vec![2, 2], vec![3]] };
    let mut s = Swag::new(l, 2);
    for i in 0..3 {
        s.collect(&(0..7).map(|j| (i * 7 + j) as f32).collect::<Vec<_>>()).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("swag.safetensors");
    s.save(&p, &[]).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    for (tensor, element, value) in
        [("mean.a", 1, f32::NAN), ("sq_mean.b.w", 2, f32::INFINITY), ("deviations.b.w", 4, f32::NAN)]
    {
        let start = header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
        let at = 8 + header_len + start + 4 * element;
        let mut poisoned = bytes.clone();
        poisoned[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let q = dir.path().join(format!("{tensor}.safetensors"));
        std::fs::write(&q, poisoned).unwrap();
        let err = Swag::load(&q).unwrap_err().to_string();
        let want = format!("`{tensor}` element {element} is {value}");
        assert!(err.contains(&q.display().to_string()) && err.contains(&want), "{want}: {err}");
    }
}
