//! The shard's correctness fixture (shard/tests/data/fixture.json, written by
//! scripts/make_fixture.py with transformers) holds prompts with the ids transformers gave
//! them; the router must produce exactly those ids, and stream the generated ids back
//! into the same text a one-shot decode gives.

use serde::Deserialize;

use super::test_support::smollm2;

#[derive(Deserialize)]
struct Fixture {
    special_ids: SpecialIds,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct SpecialIds {
    bos: u32,
    eos: u32,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shard/tests/data/fixture.json"
    );
    let json = std::fs::read_to_string(path).expect("shard fixture present");
    serde_json::from_str(&json).expect("shard fixture parses")
}

#[test]
fn prompts_encode_to_the_fixture_ids() {
    let tok = smollm2();
    let fixture = fixture();
    assert_eq!(tok.bos_token_id(), Some(fixture.special_ids.bos));
    assert_eq!(tok.eos_token_ids(), &[fixture.special_ids.eos]);
    assert!(!fixture.cases.is_empty());
    for case in &fixture.cases {
        let ids = tok.encode(&case.prompt, false).expect("encode");
        assert_eq!(ids, case.prompt_ids, "prompt {:?}", case.prompt);
        assert_eq!(tok.decode(&ids, false).expect("decode"), case.prompt);
    }
}

#[test]
fn generated_ids_stream_to_the_full_decode() {
    let tok = smollm2();
    for case in &fixture().cases {
        let mut decoder = tok.incremental_decoder(&case.prompt_ids, true);
        let mut text = String::new();
        for id in &case.generated_ids {
            text.push_str(&decoder.push(*id).expect("push"));
        }
        text.push_str(&decoder.flush().expect("flush"));
        let full = tok.decode(&case.generated_ids, true).expect("decode");
        assert_eq!(text, full);
        assert!(!full.is_empty());
    }
}
