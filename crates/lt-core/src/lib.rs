//! Shared foundations of the SRepr workspace.
//!
//! Every stage of the pipeline reads and writes *artifacts*: safetensors files whose metadata names
//! the artifact format and version, the configuration that produced it and a fingerprint of its
//! inputs. This crate holds what all stages share:
//!
//! - [`artifact`]: reading artifacts (memory-mapped, with typed errors naming the file, the tensor
//!   and what was expected) and writing them atomically, including a streaming writer for tensors
//!   too large to gather in memory;
//! - [`atomic`]: write-to-temporary-then-rename for any file;
//! - [`check`]: validated numbers (finite, positive, in a range, ...) with the field named in
//!   the error;
//! - [`rng`]: a seeded, checkpointable host random number generator (candle's CPU RNG cannot be
//!   seeded), with independent streams derived from one seed;
//! - [`lock`]: an exclusive lock per run directory naming its holder, and the cleanup of
//!   temporaries left by dead writers;
//! - [`fingerprint`]: stable content hashes used to skip work whose inputs did not change;
//! - [`split`]: the split artifact (training subset, class counts, shot groups), read by all stages;
//! - [`formats`]: the other artifact formats between stages (features, heads, predictions), one
//!   owner each;
//! - [`optim`]: SGD with momentum, Nesterov and weight decay (PyTorch semantics);
//! - [`sampler`]: samplers over labels (instance, class-balanced, power, progressive);
//! - [`memory`]: resident memory of the process (for logs and benchmarks);
//! - [`readback`]: values a loop leaves on the device and reads back several steps at a time;
//! - [`progress`]: progress reporting through `tracing` (bars on a terminal, log lines otherwise).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod artifact;
pub mod atomic;
pub mod check;
pub mod diff;
pub mod fingerprint;
pub mod formats;
pub mod layout;
pub mod lock;
pub mod memory;
pub mod optim;
pub mod progress;
pub mod readback;
pub mod rng;
pub mod sampler;
pub mod split;

pub use artifact::{Artifact, ArtifactError, ArtifactWriter, Format, TensorData};
pub use fingerprint::Fingerprint;
pub use rng::Rng;
