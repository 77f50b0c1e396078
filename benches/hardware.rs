//! Hardware collection time on this machine (`cargo bench --bench hardware`): what a
//! HardwareSync or a periodic re-check costs, run on a blocking thread.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::time::{Duration, Instant};

fn main() {
    let dir = std::env::temp_dir();
    let mut samples: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            let report = fyn_runner::hardware::collect(&dir).expect("collection works here");
            std::hint::black_box(report);
            started.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "hardware collection: median {:?}, min {:?}, max {:?} (20 runs)",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1]
    );
}
