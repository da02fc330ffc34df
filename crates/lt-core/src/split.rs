//! The `split` artifact: which training samples a run uses, their labels, the class counts and
//! the shot group of each class. Written by the data stage, read by every later stage.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, ArtifactWriter, Format, Result, KEY_DATASET, KEY_FINGERPRINT};

/// Artifact kind of the split.
pub const SPLIT_FORMAT: Format = Format { name: "lt.split", version: 1 };

/// Shot group of a class, from its number of training samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum ShotGroup {
    /// More than 100 training samples.
    Many,
    /// 20 to 100 training samples.
    Medium,
    /// Fewer than 20 training samples.
    Few,
}

impl ShotGroup {
    /// All groups in report order.
    pub const ALL: [ShotGroup; 3] = [ShotGroup::Many, ShotGroup::Medium, ShotGroup::Few];

    /// The group of a class with `n` training samples (> 100 Many, 20..=100 Medium, < 20 Few).
    pub fn of(n: usize) -> Self {
        if n > 100 {
            ShotGroup::Many
        } else if n >= 20 {
            ShotGroup::Medium
        } else {
            ShotGroup::Few
        }
    }

    /// The group's name as printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            ShotGroup::Many => "Many",
            ShotGroup::Medium => "Medium",
            ShotGroup::Few => "Few",
        }
    }

    /// The group's code in artifacts (0 Many, 1 Medium, 2 Few).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The group of an artifact code.
    pub fn from_code(c: u8) -> Option<Self> {
        Self::ALL.get(c as usize).copied()
    }
}

/// The shot group of every class.
pub fn shot_groups(counts: &[usize]) -> Vec<ShotGroup> {
    counts.iter().map(|&n| ShotGroup::of(n)).collect()
}

/// Everything the `split` artifact holds.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitInfo {
    /// Data set name (`synthetic`, `cifar10-lt`, ...).
    pub dataset: String,
    /// Class names, one per class.
    pub class_names: Vec<String>,
    /// Indices of the chosen training samples in the original training set.
    pub train_indices: Vec<usize>,
    /// Labels of the chosen training samples.
    pub train_labels: Vec<u32>,
    /// Labels of the test set, in order.
    pub test_labels: Vec<u32>,
    /// Labels of the validation set, when the data set has one.
    pub val_labels: Option<Vec<u32>>,
    /// Indices of the validation samples in the original training set, when they were drawn from
    /// it (data sets made long-tailed by subsampling).
    pub val_indices: Option<Vec<usize>>,
    /// Imbalance ratio used to build the split (`None` for natural long tails).
    pub imbalance: Option<f64>,
    /// Size of the original training set.
    pub original_train_len: usize,
}

impl SplitInfo {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Training samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes()];
        for &y in &self.train_labels {
            c[y as usize] += 1;
        }
        c
    }

    /// Shot group of each class.
    pub fn groups(&self) -> Vec<ShotGroup> {
        shot_groups(&self.class_counts())
    }

    /// Writes the artifact (atomically) with `fingerprint` in its metadata.
    pub fn write(&self, path: &Path, fingerprint: &str) -> Result<()> {
        let counts: Vec<i64> = self.class_counts().iter().map(|&c| c as i64).collect();
        let groups: Vec<u8> = self.groups().iter().map(|g| g.code()).collect();
        let idx: Vec<i64> = self.train_indices.iter().map(|&i| i as i64).collect();
        let mut w = ArtifactWriter::new(SPLIT_FORMAT);
        w.meta(KEY_DATASET, &self.dataset)
            .meta_json("class_names", &self.class_names)
            .meta("num_classes", self.num_classes().to_string())
            .meta("original_train_len", self.original_train_len.to_string())
            .meta("imbalance", self.imbalance.map(|r| r.to_string()).unwrap_or_else(|| "natural".into()))
            .meta(KEY_FINGERPRINT, fingerprint);
        w.push_i64("train_indices", &[idx.len()], idx)
            .push_u32("train_labels", &[self.train_labels.len()], self.train_labels.as_slice())
            .push_i64("class_counts", &[counts.len()], counts)
            .push_u8("shot_groups", &[groups.len()], groups)
            .push_u32("test_labels", &[self.test_labels.len()], self.test_labels.as_slice());
        if let Some(v) = &self.val_labels {
            w.push_u32("val_labels", &[v.len()], v.as_slice());
        }
        if let Some(v) = &self.val_indices {
            let v: Vec<i64> = v.iter().map(|&i| i as i64).collect();
            w.push_i64("val_indices", &[v.len()], v);
        }
        w.write(path)
    }

    /// What a split artifact records of the data it was made from, `(data set name,
    /// fingerprint)`, without reading its tensors: the fingerprint is the one
    /// [`write`](Self::write) was given (a `DataBundle`'s, in `lt train`).
    pub fn recorded(path: &Path) -> Result<(String, String)> {
        let a = Artifact::open(path, SPLIT_FORMAT)?;
        Ok((a.meta(KEY_DATASET)?.to_string(), a.meta(KEY_FINGERPRINT)?.to_string()))
    }

    /// Reads and validates a split artifact: labels in range, counts and groups consistent.
    pub fn read(path: &Path) -> Result<Self> {
        let a = Artifact::open(path, SPLIT_FORMAT)?;
        let c: usize = a.meta_parse("num_classes")?;
        let class_names: Vec<String> = a.meta_json("class_names")?;
        if class_names.len() != c {
            return Err(a.bad_meta("class_names", format!("{} names for {c} classes", class_names.len())));
        }
        let original_train_len: usize = a.meta_parse("original_train_len")?;
        let train_indices = a.indices("train_indices", original_train_len.max(1))?;
        let to_u32 = |v: Vec<usize>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
        let train_labels = to_u32(a.indices("train_labels", c)?);
        if train_labels.len() != train_indices.len() {
            return Err(a.bad_value(
                "train_labels",
                format!("{} labels for {} training indices", train_labels.len(), train_indices.len()),
            ));
        }
        let test_labels = to_u32(a.indices("test_labels", c)?);
        let val_labels =
            if a.contains("val_labels") { Some(to_u32(a.indices("val_labels", c)?)) } else { None };
        let val_indices = if a.contains("val_indices") {
            let v = a.indices("val_indices", original_train_len.max(1))?;
            if Some(v.len()) != val_labels.as_ref().map(Vec::len) {
                return Err(a.bad_value("val_indices", "needs one entry per `val_labels` entry"));
            }
            let train: std::collections::HashSet<usize> = train_indices.iter().copied().collect();
            if let Some(i) = v.iter().find(|i| train.contains(i)) {
                return Err(a.bad_value("val_indices", format!("index {i} is also a training index")));
            }
            Some(v)
        } else {
            None
        };
        let imbalance = match a.meta("imbalance")? {
            "natural" => None,
            s => Some(s.parse::<f64>().map_err(|e| a.bad_meta("imbalance", e.to_string()))?),
        };
        let info = SplitInfo {
            dataset: a.meta(KEY_DATASET)?.to_string(),
            class_names,
            train_indices,
            train_labels,
            test_labels,
            val_labels,
            val_indices,
            imbalance,
            original_train_len,
        };
        let counts: Vec<i64> = a.i64("class_counts")?;
        let want: Vec<i64> = info.class_counts().iter().map(|&x| x as i64).collect();
        if counts != want {
            return Err(a.bad_value("class_counts", "does not match the training labels"));
        }
        let groups: Vec<u8> = a.i64("shot_groups")?.iter().map(|&g| g as u8).collect();
        let want: Vec<u8> = info.groups().iter().map(|g| g.code()).collect();
        if groups != want {
            return Err(a.bad_value(
                "shot_groups",
                "does not match the class counts (> 100 Many, 20..100 Medium, < 20 Few)",
            ));
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The groups' bounds (> 100 Many, 20..=100 Medium, < 20 Few), names and artifact codes.
    #[test]
    fn shot_groups_have_their_bounds_names_and_codes() {
        let groups = shot_groups(&[101, 100, 20, 19, 0]);
        use ShotGroup::*;
        assert_eq!(groups, [Many, Medium, Medium, Few, Few]);
        let names: Vec<&str> = ShotGroup::ALL.iter().map(|g| g.name()).collect();
        assert_eq!(names, ["Many", "Medium", "Few"]);
        for (code, g) in ShotGroup::ALL.into_iter().enumerate() {
            assert_eq!((g.code(), ShotGroup::from_code(code as u8)), (code as u8, Some(g)));
        }
        assert_eq!(ShotGroup::from_code(3), None);
    }

    #[test]
    fn roundtrip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("split.safetensors");
        let info = SplitInfo {
            dataset: "toy".into(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            train_indices: vec![5, 3, 9, 1],
            train_labels: vec![0, 0, 1, 2],
            test_labels: vec![0, 1, 2],
            val_labels: Some(vec![2, 1]),
            val_indices: Some(vec![0, 2]),
            imbalance: Some(100.0),
            original_train_len: 10,
        };
        info.write(&p, "abc").unwrap();
        assert_eq!(SplitInfo::read(&p).unwrap(), info);
        assert_eq!(SplitInfo::recorded(&p).unwrap(), ("toy".to_string(), "abc".to_string()));
        assert_eq!(info.groups(), vec![ShotGroup::Few; 3]);

        let overlap = SplitInfo { val_indices: Some(vec![0, 3]), ..info.clone() };
        overlap.write(&p, "abc").unwrap();
        let err = SplitInfo::read(&p).unwrap_err().to_string();
        assert!(err.contains("val_indices") && err.contains("index 3"), "{err}");

        let bad = SplitInfo { train_indices: vec![5, 3, 19, 1], ..info.clone() };
        bad.write(&p, "abc").unwrap();
        let err = SplitInfo::read(&p).unwrap_err().to_string();
        assert!(err.contains("train_indices") && err.contains("entry 2 is 19, outside 0..10"), "{err}");
    }
}
