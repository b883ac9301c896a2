//! Micro-benchmarks of the JSON paths that the `simd-json` feature swaps (encoding a
//! profile, parsing a PATCH body). Run
//! `cargo bench` and `cargo bench --features simd-json` and compare the two reports.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use perflab::db::User;
use perflab::users::{email_change_body, EmailChange};

fn bench(c: &mut Criterion) {
    let implementation = perflab::json::IMPLEMENTATION;
    let body = email_change_body("someone.with.a.longer.address@example.com").to_vec();
    c.bench_function(&format!("decode PATCH body ({implementation})"), |b| {
        b.iter(|| {
            let parsed: EmailChange =
                perflab::json::decode(black_box(body.clone())).expect("valid body");
            parsed
        })
    });
    let user = User {
        id: 123_456,
        name: "User 123456".into(),
        email: "user123456@example.com".into(),
        updated_at: "2024-01-01T00:00:00.000000Z".into(),
        version: 42,
    };
    c.bench_function(&format!("encode profile ({implementation})"), |b| {
        b.iter(|| perflab::json::encode(black_box(&user)).expect("encodable"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
