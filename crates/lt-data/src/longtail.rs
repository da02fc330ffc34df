//! Long-tailed construction: the exponential profile, the LDAM-DRW selection and shot groups.

use crate::error::{DataError, Result};
use crate::numpy_mt::NumpyRandomState;

/// Per-class counts of the exponential profile `n_c = floor(n_max * rho^(-c/(C-1)))`.
///
/// Computed exactly as LDAM-DRW's `get_img_num_per_cls` does (`img_max * imb_factor**(c/(C-1))`
/// with `imb_factor = 1/rho` in double precision), so that the counts match bit for bit.
/// `rho = 1` gives a balanced profile; `classes = 1` gives `[n_max]`.
pub fn exponential_profile(n_max: usize, classes: usize, rho: f64) -> Result<Vec<usize>> {
    if classes == 0 {
        return Err(DataError::Invalid("the long-tailed profile needs at least one class".into()));
    }
    if !(rho.is_finite() && rho >= 1.0) {
        return Err(DataError::Invalid(format!("imbalance ratio must be a finite number >= 1, got {rho}")));
    }
    if classes == 1 {
        return Ok(vec![n_max]);
    }
    let imb_factor = 1.0 / rho;
    Ok((0..classes)
        .map(|c| {
            let n = n_max as f64 * imb_factor.powf(c as f64 / (classes as f64 - 1.0));
            n as usize
        })
        .collect())
}

/// Chooses the long-tailed subset exactly as LDAM-DRW's `gen_imbalanced_data`: numpy's legacy
/// generator seeded once with `seed`; for each class in ascending order, the positions of that
/// class in file order are shuffled and the first `counts[c]` kept; classes are concatenated.
///
/// Returns indices into `labels`. Fails if a class has fewer samples than requested.
pub fn ldam_selection(labels: &[u32], counts: &[usize], seed: u32) -> Result<Vec<usize>> {
    Ok(ldam_selection_with_val(labels, counts, seed, 0)?.train)
}

/// A long-tailed training selection with a class-balanced validation set beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongTailSplit {
    /// Training indices, class by class (the LDAM-DRW selection, see [`ldam_selection_with_val`]).
    pub train: Vec<usize>,
    /// Validation indices, class by class, `val_per_class` of each class (or `val[c]`).
    pub val: Vec<usize>,
    /// Per class, how many validation images had to be taken from the class's selected training
    /// images because the class had too few unselected ones (the head class when `n_0` is the
    /// whole class, e.g. CIFAR-10-LT and Fashion-MNIST-LT class 0).
    pub val_from_train: Vec<usize>,
}

/// [`ldam_selection`] plus a class-balanced validation set of `val_per_class` images per class,
/// drawn without consuming any extra randomness, so that the training selection stays bit-exact
/// with LDAM-DRW wherever a class has enough images:
///
/// - after class `c`'s positions are shuffled and the first `counts[c]` kept for training, the
///   validation images are the next `val_per_class` of the same shuffled order (images the
///   long-tailed selection did not use);
/// - a class with fewer than `val_per_class` unused images gives the missing ones from the end
///   of its training selection (recorded in [`LongTailSplit::val_from_train`]); it must keep at
///   least one training image.
///
/// `val_per_class = 0` gives exactly [`ldam_selection`].
pub fn ldam_selection_with_val(
    labels: &[u32],
    counts: &[usize],
    seed: u32,
    val_per_class: usize,
) -> Result<LongTailSplit> {
    ldam_selection_with_val_counts(labels, counts, seed, &vec![val_per_class; counts.len()])
}

/// [`ldam_selection_with_val`] with a validation count per class: `val[c]` images of class `c`
/// (for data whose smallest classes cannot give as many as the others).
pub fn ldam_selection_with_val_counts(
    labels: &[u32],
    counts: &[usize],
    seed: u32,
    val: &[usize],
) -> Result<LongTailSplit> {
    if val.len() != counts.len() {
        return Err(DataError::Invalid(format!(
            "{} validation counts for {} classes",
            val.len(),
            counts.len()
        )));
    }
    let mut rng = NumpyRandomState::new(seed);
    let mut train = Vec::with_capacity(counts.iter().sum());
    let mut val_idx = Vec::with_capacity(val.iter().sum());
    let mut val_from_train = vec![0usize; counts.len()];
    for (c, (&want, &v)) in counts.iter().zip(val).enumerate() {
        let mut idx: Vec<usize> =
            labels.iter().enumerate().filter(|(_, &y)| y as usize == c).map(|(i, _)| i).collect();
        if idx.len() < want {
            return Err(DataError::Invalid(format!(
                "class {c} has {} samples, the long-tailed profile asks for {want}",
                idx.len()
            )));
        }
        rng.shuffle(&mut idx);
        let unused = (idx.len() - want).min(v);
        let deficit = v - unused;
        if deficit > 0 && deficit >= want {
            return Err(DataError::Invalid(format!(
                "class {c} has {} samples: too few for {want} training and {v} validation images",
                idx.len()
            )));
        }
        train.extend_from_slice(&idx[..want - deficit]);
        val_idx.extend_from_slice(&idx[want - deficit..want]);
        val_idx.extend_from_slice(&idx[want..want + unused]);
        val_from_train[c] = deficit;
    }
    Ok(LongTailSplit { train, val: val_idx, val_from_train })
}

/// Number of samples per class in `labels` (labels must be `< classes`).
pub fn class_counts(labels: &[u32], classes: usize) -> Vec<usize> {
    let mut counts = vec![0usize; classes];
    for &y in labels {
        counts[y as usize] += 1;
    }
    counts
}

pub use lt_core::split::{shot_groups, ShotGroup};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar10_lt_profile_matches_ldam() {
        assert_eq!(
            exponential_profile(5000, 10, 100.0).unwrap(),
            vec![5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        );
        let total = |n, c, r| exponential_profile(n, c, r).unwrap().iter().sum::<usize>();
        assert_eq!(total(5000, 10, 10.0), 20_431);
        assert_eq!(total(5000, 10, 50.0), 13_996);
        assert_eq!(total(5000, 10, 100.0), 12_406);
        assert_eq!(total(500, 100, 10.0), 19_573);
        assert_eq!(total(500, 100, 50.0), 12_608);
        assert_eq!(total(500, 100, 100.0), 10_847);
        let f = exponential_profile(6000, 10, 100.0).unwrap();
        assert_eq!((f[0], f[9]), (6000, 60));
        assert_eq!(exponential_profile(7, 3, 1.0).unwrap(), vec![7, 7, 7]);
        assert!(exponential_profile(7, 3, 0.5).is_err());
        assert!(exponential_profile(7, 0, 2.0).is_err());
    }

    #[test]
    fn cifar100_lt_groups_split_35_35_30() {
        let counts = exponential_profile(500, 100, 100.0).unwrap();
        let g = shot_groups(&counts);
        let n = |x| g.iter().filter(|&&y| y == x).count();
        assert_eq!((n(ShotGroup::Many), n(ShotGroup::Medium), n(ShotGroup::Few)), (35, 35, 30));
        assert_eq!(ShotGroup::of(101), ShotGroup::Many);
        assert_eq!(ShotGroup::of(100), ShotGroup::Medium);
        assert_eq!(ShotGroup::of(20), ShotGroup::Medium);
        assert_eq!(ShotGroup::of(19), ShotGroup::Few);
    }

    #[test]
    fn ldam_selection_shuffles_each_class_with_one_numpy_stream() {
        // Class 0 occupies positions 0..10 in file order, class 1 positions 10..15.
        let labels: Vec<u32> = (0..15).map(|i| if i < 10 { 0 } else { 1 }).collect();
        let sel = ldam_selection(&labels, &[10, 2], 0).unwrap();
        // First class: exactly numpy's shuffle(arange(10)) with seed 0.
        assert_eq!(&sel[..10], &[2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        // Second class continues the same stream.
        let mut r = NumpyRandomState::new(0);
        let mut first: Vec<usize> = (0..10).collect();
        r.shuffle(&mut first);
        let mut second: Vec<usize> = (10..15).collect();
        r.shuffle(&mut second);
        assert_eq!(&sel[10..], &second[..2]);
        assert!(ldam_selection(&labels, &[11, 2], 0).is_err());
    }

    #[test]
    fn validation_comes_from_unused_images_without_touching_the_training_selection() {
        // Class 0: 10 images, 6 selected; class 1: 5 images, all 5 selected (a head class at n_max).
        let labels: Vec<u32> = (0..15).map(|i| if i < 10 { 0 } else { 1 }).collect();
        let plain = ldam_selection(&labels, &[6, 5], 0).unwrap();
        let s = ldam_selection_with_val(&labels, &[6, 5], 0, 2).unwrap();
        // Class 0 trains on exactly the LDAM selection, validates on the next two shuffled images.
        assert_eq!(&s.train[..6], &plain[..6]);
        assert_eq!(&plain[..6], &[2, 8, 4, 9, 1, 6]);
        assert_eq!(&s.val[..2], &[7, 3]);
        // Class 1 has no unused image: its last two selected images become validation images.
        assert_eq!(&s.train[6..], &plain[6..9]);
        assert_eq!(&s.val[2..], &plain[9..11]);
        assert_eq!(s.val_from_train, vec![0, 2]);
        // Disjoint, and every validation image has the right class.
        for v in &s.val {
            assert!(!s.train.contains(v));
        }
        assert_eq!(s.val.iter().map(|&i| labels[i]).collect::<Vec<_>>(), vec![0, 0, 1, 1]);
        assert_eq!(ldam_selection_with_val(&labels, &[6, 5], 0, 0).unwrap().train, plain);
        // A class that cannot keep a training image is refused.
        let err = ldam_selection_with_val(&labels, &[6, 5], 0, 5).unwrap_err().to_string();
        assert!(err.contains("class 1") && err.contains("validation"), "{err}");
    }

    #[test]
    fn validation_counts_per_class_draw_from_the_same_shuffles() {
        let labels: Vec<u32> = (0..15).map(|i| if i < 10 { 0 } else { 1 }).collect();
        let s = ldam_selection_with_val_counts(&labels, &[6, 5], 0, &[3, 0]).unwrap();
        // Class 0 gives 3 of its unused images, class 1 none: its training images are all kept.
        assert_eq!(s.train, ldam_selection(&labels, &[6, 5], 0).unwrap());
        assert_eq!(s.val, vec![7, 3, 0]);
        assert_eq!(s.val_from_train, vec![0, 0]);
        // Equal counts are the uniform split.
        assert_eq!(
            ldam_selection_with_val_counts(&labels, &[6, 5], 0, &[2, 2]).unwrap(),
            ldam_selection_with_val(&labels, &[6, 5], 0, 2).unwrap()
        );
        let err = ldam_selection_with_val_counts(&labels, &[6, 5], 0, &[2]).unwrap_err().to_string();
        assert!(err.contains("1 validation counts for 2 classes"), "{err}");
    }
}
