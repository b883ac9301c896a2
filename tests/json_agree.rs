//! With `simd-json`, the server's decoder must accept and refuse exactly the PATCH
//! bodies serde_json does, with the same email: trailing data, duplicate keys, lone
//! surrogates, a byte-order mark, and arbitrary bytes. (Without it, the decoder is
//! serde_json itself.)
#![cfg(feature = "simd-json")]

use perflab::users::EmailChange;
use proptest::prelude::*;

/// What serde_json makes of a body: the email, or a refusal.
fn reference(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<EmailChange>(body)
        .ok()
        .map(|c| c.email)
}

/// What the server's decoder makes of it.
fn ours(body: &[u8]) -> Option<String> {
    perflab::json::decode::<EmailChange>(body.to_vec())
        .ok()
        .map(|c| c.email)
}

#[test]
fn the_known_differences_between_parsers_are_refused_alike() {
    let cases: [&[u8]; 14] = [
        br#"{"email":"a@b"}"#,
        b" {\"email\":\"a@b\"} \n",
        br#"{"email":"a@b"} x"#,
        br#"{"email":"a@b"}{"email":"c@d"}"#,
        br#"{"email":"a@b","email":"c@d"}"#,
        br#"{"email":"\ud800"}"#,
        br#"{"email":"\udc00x"}"#,
        br#"{"email":"\ud83d\ude00@b"}"#,
        b"\xEF\xBB\xBF{\"email\":\"a@b\"}",
        br#"{"email":"a@b","x":1}"#,
        br#"{"email":null}"#,
        br#"{"email":"a\u0000b"}"#,
        b"{\"email\":\"\xff@b\"}",
        br#"{"email":"a@b",}"#,
    ];
    let differ: Vec<String> = cases
        .iter()
        .filter(|b| ours(b) != reference(b))
        .map(|b| {
            format!(
                "{:?}: ours {:?}, serde_json {:?}",
                String::from_utf8_lossy(b),
                ours(b),
                reference(b)
            )
        })
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bodies_are_decoded_alike(body in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(ours(&body), reference(&body));
    }

    #[test]
    fn arbitrary_emails_in_a_valid_body_are_decoded_alike(email in "\\PC{0,40}", tail in "[ \t\r\n}x,]{0,3}") {
        let body = format!("{{\"email\":{}}}{tail}", serde_json::to_string(&email).unwrap());
        prop_assert_eq!(ours(body.as_bytes()), reference(body.as_bytes()));
    }
}
