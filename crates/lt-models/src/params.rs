//! Parameter and buffer storage with PyTorch-compatible names.
//!
//! Trainable parameters live in a candle-nn [`VarMap`] (so that optimizers and the SWAG crate
//! can address them by name, flattened in sorted-name order); batch-norm running statistics and
//! `num_batches_tracked` are *buffers*, kept apart because they are not trained, not averaged by
//! SWA and not tracked by SWAG.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::Result;

/// How training-mode batch norm updates its running statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BnUpdate {
    /// Exponential moving average with this momentum (PyTorch's default 0.1).
    Momentum(f64),
    /// Cumulative average with every sample weighted equally (momentum `b / (n + b)` for a batch
    /// of `b` after `n` samples): the BN recalibration of SWA and SWAG samples.
    Cumulative,
}

/// Parameters (in a [`VarMap`]) and buffers of one model.
pub struct ParamStore {
    varmap: VarMap,
    buffers: Mutex<BTreeMap<String, Tensor>>,
    bn_update: Mutex<BnUpdate>,
    seen: Mutex<HashMap<String, usize>>,
    /// Batches each batch norm (by prefix) has counted and its `num_batches_tracked` does not
    /// hold yet: added when the buffer is read ([`ParamStore::buffer`],
    /// [`ParamStore::named_buffers`]), so that a training step adds to a host counter instead of
    /// launching a kernel per batch norm.
    uncounted: Mutex<HashMap<String, i64>>,
    device: Device,
}

impl ParamStore {
    /// An empty store on `device`.
    pub fn new(device: &Device) -> Self {
        Self {
            varmap: VarMap::new(),
            buffers: Mutex::new(BTreeMap::new()),
            bn_update: Mutex::new(BnUpdate::Momentum(0.1)),
            seen: Mutex::new(HashMap::new()),
            uncounted: Mutex::new(HashMap::new()),
            device: device.clone(),
        }
    }

    /// The device parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trainable parameters.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Registers a trainable parameter.
    pub fn add_param(&self, name: &str, value: Tensor) -> Result<Var> {
        let var = Var::from_tensor(&value.to_device(&self.device)?)?;
        self.varmap.data().lock().expect("varmap lock").insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// A parameter by name.
    pub fn var(&self, name: &str) -> Option<Var> {
        self.varmap.data().lock().expect("varmap lock").get(name).cloned()
    }

    /// All parameters, sorted by name.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        let map = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Total number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.named_params().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Sets (or adds) a buffer.
    pub fn set_buffer(&self, name: &str, value: Tensor) -> Result<()> {
        let value = value.to_device(&self.device)?.detach();
        let mut b = self.buffers.lock().expect("buffer lock");
        if let Some(prefix) = name.strip_suffix(COUNTER) {
            self.uncounted.lock().expect("count lock").remove(prefix);
        }
        b.insert(name.to_string(), value);
        Ok(())
    }

    /// A buffer by name.
    pub fn buffer(&self, name: &str) -> Option<Tensor> {
        let mut b = self.buffers.lock().expect("buffer lock");
        if let Some(prefix) = name.strip_suffix(COUNTER) {
            let pending = self.uncounted.lock().expect("count lock").remove(prefix);
            // An i64 add fails only on a broken device, which the next op reports.
            let _ = add_batches(&mut b, prefix, pending);
        }
        b.get(name).cloned()
    }

    /// All buffers, sorted by name.
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut b = self.buffers.lock().expect("buffer lock");
        let pending: Vec<(String, i64)> = self.uncounted.lock().expect("count lock").drain().collect();
        for (prefix, n) in pending {
            // As in `buffer`.
            let _ = add_batches(&mut b, &prefix, Some(n));
        }
        b.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// How training-mode batch norm updates its running statistics.
    pub fn bn_update(&self) -> BnUpdate {
        *self.bn_update.lock().expect("bn lock")
    }

    /// Chooses how training-mode batch norm updates its running statistics.
    pub fn set_bn_update(&self, u: BnUpdate) {
        *self.bn_update.lock().expect("bn lock") = u;
    }

    /// Resets every batch norm's running statistics (mean 0, variance 1, no batches tracked).
    pub fn reset_bn_stats(&self) -> Result<()> {
        let mut b = self.buffers.lock().expect("buffer lock");
        for (name, t) in b.iter_mut() {
            if name.ends_with(".running_mean") {
                *t = t.zeros_like()?;
            } else if name.ends_with(".running_var") {
                *t = t.ones_like()?;
            } else if name.ends_with(".num_batches_tracked") {
                *t = Tensor::new(0i64, &self.device)?;
            }
        }
        self.seen.lock().expect("seen lock").clear();
        self.uncounted.lock().expect("count lock").clear();
        Ok(())
    }

    /// The weight `m` of the next batch of `count` values per channel in batch norm `prefix`'s
    /// running statistics (`running = (1 - m) running + m batch`, the batch variance unbiased):
    /// the momentum, or for a cumulative average `count / (seen + count)`, which this call then
    /// counts as seen.
    pub(crate) fn bn_momentum(&self, prefix: &str, count: usize) -> f64 {
        match self.bn_update() {
            BnUpdate::Momentum(m) => m,
            BnUpdate::Cumulative => {
                let mut seen = self.seen.lock().expect("seen lock");
                let n = seen.entry(prefix.to_string()).or_insert(0);
                let m = count as f64 / (*n + count) as f64;
                *n += count;
                m
            }
        }
    }

    /// Folds one batch's statistics (its mean and biased variance over `count` values per
    /// channel) into the running statistics of batch norm `prefix`, and counts the batch.
    pub(crate) fn update_bn(
        &self,
        prefix: &str,
        mean: &Tensor,
        var_biased: &Tensor,
        count: usize,
    ) -> Result<()> {
        let m = self.bn_momentum(prefix, count);
        {
            let mut b = self.buffers.lock().expect("buffer lock");
            let names = [format!("{prefix}.running_mean"), format!("{prefix}.running_var")];
            if let (Some(rm), Some(rv)) = (b.get(&names[0]), b.get(&names[1])) {
                let (rm, rv) = fold_running((rm, rv), (mean, var_biased, count), m)?;
                b.insert(names[0].clone(), rm);
                b.insert(names[1].clone(), rv);
            }
        }
        self.count_batch(prefix)
    }

    /// Replaces batch norm `prefix`'s running statistics with `(mean, var)`, updated elsewhere
    /// with [`ParamStore::bn_momentum`]'s weight (by cuDNN's training forward pass), and counts
    /// the batch.
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
    pub(crate) fn set_running(&self, prefix: &str, mean: Tensor, var: Tensor) -> Result<()> {
        {
            let mut b = self.buffers.lock().expect("buffer lock");
            b.insert(format!("{prefix}.running_mean"), mean.detach());
            b.insert(format!("{prefix}.running_var"), var.detach());
        }
        self.count_batch(prefix)
    }

    /// Counts one batch for batch norm `prefix`'s `num_batches_tracked`, on the host: the
    /// buffer gets it when read (see `uncounted`).
    fn count_batch(&self, prefix: &str) -> Result<()> {
        let mut uncounted = self.uncounted.lock().expect("count lock");
        match uncounted.get_mut(prefix) {
            Some(n) => *n += 1,
            None => {
                uncounted.insert(prefix.to_string(), 1);
            }
        }
        Ok(())
    }
}

/// The suffix of a batch norm's batch counter.
const COUNTER: &str = ".num_batches_tracked";

/// Adds `n` batches to batch norm `prefix`'s `num_batches_tracked` in `buffers`, on the device
/// (no host round trip, which is a synchronisation on CUDA); nothing for `None`, 0 or a batch
/// norm without the counter.
fn add_batches(buffers: &mut BTreeMap<String, Tensor>, prefix: &str, n: Option<i64>) -> Result<()> {
    let Some(n) = n.filter(|&n| n != 0) else { return Ok(()) };
    if let Some(nb) = buffers.get_mut(&format!("{prefix}{COUNTER}")) {
        *nb = nb.to_dtype(DType::I64)?.affine(1.0, n as f64)?.detach();
    }
    Ok(())
}

/// Running statistics `(mean, var)` with one batch folded in with weight `m`:
/// `(1 - m) running + m batch`, the batch's biased variance over `count` values made unbiased
/// (PyTorch's rule, and cuDNN's).
pub(crate) fn fold_running(
    (mean, var): (&Tensor, &Tensor),
    (batch_mean, batch_var_biased, count): (&Tensor, &Tensor, usize),
    m: f64,
) -> Result<(Tensor, Tensor)> {
    let unbiased = if count > 1 { count as f64 / (count - 1) as f64 } else { 1.0 };
    let mean = (mean.affine(1.0 - m, 0.0)? + batch_mean.to_dtype(mean.dtype())?.affine(m, 0.0)?)?.detach();
    let var = (var.affine(1.0 - m, 0.0)?
        + batch_var_biased.to_dtype(var.dtype())?.affine(m * unbiased, 0.0)?)?
    .detach();
    Ok((mean, var))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(store: &ParamStore) -> i64 {
        store.buffer("bn.num_batches_tracked").unwrap().to_scalar::<i64>().unwrap()
    }

    /// Batches counted on the host reach `num_batches_tracked` whichever way it is read; setting
    /// the counter or resetting the statistics drops what was not yet added.
    #[test]
    fn counted_batches_reach_the_counter_when_it_is_read() {
        let store = ParamStore::new(&Device::Cpu);
        store.set_buffer("bn.num_batches_tracked", Tensor::new(5i64, &Device::Cpu).unwrap()).unwrap();
        for _ in 0..3 {
            store.count_batch("bn").unwrap();
        }
        store.count_batch("other").unwrap(); // no such counter: nothing to add to
        assert_eq!(counter(&store), 8);
        store.count_batch("bn").unwrap();
        let all = store.named_buffers();
        let nb = all.iter().find(|(n, _)| n == "bn.num_batches_tracked").unwrap();
        assert_eq!(nb.1.to_scalar::<i64>().unwrap(), 9);
        assert_eq!(counter(&store), 9, "added once");

        store.count_batch("bn").unwrap();
        store.set_buffer("bn.num_batches_tracked", Tensor::new(2i64, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(counter(&store), 2);
        store.count_batch("bn").unwrap();
        store.reset_bn_stats().unwrap();
        assert_eq!(counter(&store), 0);
    }
}
