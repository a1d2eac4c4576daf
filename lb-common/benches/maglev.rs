//! How long [`build_ring`] takes, the work the agent does on every backend or weight change.
//!
//! `cargo bench -p lb-common --bench maglev`. Benchmark ids are `maglev_build/{N}x{M}/{weighting}`
//! for N backends and a ring of M slots; criterion stores each one's results under
//! `target/criterion/maglev_build/{N}x{M}_{weighting}/` (it turns the `/` inside an id into `_`).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use lb_common::maglev::{build_ring, MaglevBackend};

/// (backends, ring size) pairs: the production ring size with small to large pools, and a
/// ring ten times larger (for pools where 65537 slots would balance too coarsely).
const SHAPES: [(usize, u32); 4] = [(10, 65537), (100, 65537), (1000, 65537), (1000, 655_373)];

/// Identities the way the agent makes them: the backend's address as text.
fn identities(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256).into_bytes())
        .collect()
}

/// The weight of backend `i`.
type WeightOf = fn(usize) -> u32;

/// Backend `i` gets id `i` and weight `weight_of(i)`.
fn backends(identities: &[Vec<u8>], weight_of: WeightOf) -> Vec<MaglevBackend<'_>> {
    identities
        .iter()
        .enumerate()
        .map(|(i, identity)| MaglevBackend {
            id: u32::try_from(i).expect("fewer than 2^32 backends"),
            identity,
            weight: weight_of(i),
        })
        .collect()
}

/// Every weighting benchmarked: equal weights, and weights 1..=10 spread over the backends.
const WEIGHTINGS: [(&str, WeightOf); 2] =
    [("unweighted", |_| 1), ("weighted", |i| 1 + (i % 10) as u32)];

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    // Enough for stable medians while the whole file runs in well under a minute.
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (count, size) in SHAPES {
        let identities = identities(count);
        for (weighting, weight_of) in WEIGHTINGS {
            let backends = backends(&identities, weight_of);
            group.bench_function(format!("{count}x{size}/{weighting}"), |bencher| {
                bencher.iter(|| {
                    build_ring(std::hint::black_box(&backends), std::hint::black_box(size))
                        .expect("valid configuration")
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, maglev_build);
criterion_main!(benches);
