//! Micro-benchmarks of the request path's pure pieces that every request runs: routing
//! a path (with its id parsed) and checking a new email. `cargo bench --bench routing`.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use perflab::routes::{route, Route};
use perflab::users::validate_email;

fn bench(c: &mut Criterion) {
    c.bench_function("route /users/{id}", |b| {
        b.iter(|| {
            let r = route(black_box("/users/123456"));
            assert!(matches!(r, Route::User(Ok(123_456))));
            r
        })
    });
    c.bench_function("route /readyz", |b| b.iter(|| route(black_box("/readyz"))));
    c.bench_function("route an unknown path", |b| {
        b.iter(|| route(black_box("/users/12/extra")))
    });
    c.bench_function("validate an email", |b| {
        b.iter(|| validate_email(black_box("someone.with.a.longer.address@example.com")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
