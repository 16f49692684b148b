//! The tokenizer against transformers' ids for the default model (testdata/make_expected.py),
//! and encode/decode behaviour on a tiny synthetic vocabulary.

use serde::Deserialize;

use super::error::TokenizeError;
use super::test_support::{smollm2, tiny_tokenizer};

#[derive(Deserialize)]
struct Fixture {
    vocab_size: usize,
    bos_token: String,
    eos_token: String,
    cases: Vec<Case>,
    token_bytes: std::collections::BTreeMap<u32, Vec<u8>>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

fn fixture() -> Fixture {
    let json = include_str!("testdata/tokenizer_expected.json");
    serde_json::from_str(json).expect("tokenizer_expected.json parses")
}

#[test]
fn encode_matches_transformers_ids() {
    let tok = smollm2();
    let fixture = fixture();
    assert!(fixture.cases.len() >= 20);
    for case in &fixture.cases {
        let ids = tok.encode(&case.text, false).expect("encode");
        assert_eq!(ids, case.ids, "ids of {:?}", case.text);
        // add_bos_token is false for SmolLM2: special tokens add nothing.
        assert_eq!(tok.encode(&case.text, true).expect("encode"), case.ids);
    }
}

#[test]
fn decode_matches_transformers_text() {
    let tok = smollm2();
    for case in &fixture().cases {
        assert_eq!(tok.decode(&case.ids, false).expect("decode"), case.decoded);
        assert_eq!(
            tok.decode(&case.ids, true).expect("decode"),
            case.decoded_skip_special,
            "skip_special_tokens of {:?}",
            case.text
        );
    }
}

#[test]
fn special_tokens_and_sizes_come_from_metadata() {
    let tok = smollm2();
    let fixture = fixture();
    assert_eq!(tok.vocab_size(), fixture.vocab_size);
    assert_eq!(tok.bos_token(), Some(fixture.bos_token.as_str()));
    assert_eq!(tok.eos_token(), Some(fixture.eos_token.as_str()));
    assert_eq!(tok.eos_token_ids(), &[2]);
    assert_eq!(tok.bos_token_id(), Some(1));
    assert!(tok.has_chat_template());
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
}

#[test]
fn token_bytes_and_strings() {
    let tok = smollm2();
    for (id, bytes) in &fixture().token_bytes {
        assert_eq!(tok.token_bytes(*id).as_ref(), Some(bytes), "bytes of {id}");
    }
    assert_eq!(tok.id_to_token(905).as_deref(), Some(" world"));
    assert_eq!(tok.vocab_token(905).as_deref(), Some("Ġworld"));
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
    let last = u32::try_from(tok.vocab_size()).expect("vocab fits u32");
    assert_eq!(tok.id_to_token(last), None);
    assert_eq!(tok.token_bytes(last), None);
    // Every token's bytes re-encode to itself when they form valid UTF-8 text on their own.
    let rebuilt: Vec<u8> = [19556u32, 905]
        .iter()
        .flat_map(|id| tok.token_bytes(*id).unwrap_or_default())
        .collect();
    assert_eq!(rebuilt, b"Hello world");
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let tok = smollm2();
    let err = tok
        .decode(&[1, 60_000], false)
        .expect_err("60000 is out of range");
    assert!(matches!(
        err,
        TokenizeError::InvalidId {
            id: 60_000,
            vocab_size: 49_152
        }
    ));
}

#[test]
fn tiny_vocab_applies_merges_specials_and_bos() {
    let tok = tiny_tokenizer();
    let hello = tok.token_to_id("hello").expect("merged token");
    let world = tok.token_to_id("Ġworld").expect("merged token");
    assert_eq!(
        tok.encode("hello world", false).expect("encode"),
        vec![hello, world]
    );
    assert_eq!(
        tok.encode("hello world", true).expect("encode"),
        vec![1, hello, world]
    );
    assert_eq!(
        tok.encode("<|start|>hello<|end|>", false).expect("encode"),
        vec![1, hello, 0]
    );
    assert_eq!(tok.decode(&[1, hello, 0], true).expect("decode"), "hello");
    assert_eq!(
        tok.decode(&[1, hello, 0], false).expect("decode"),
        "<|start|>hello<|end|>"
    );
}

#[test]
fn missing_gguf_is_a_typed_error() {
    let err = super::ModelTokenizer::from_gguf(std::path::Path::new("/nonexistent/x.gguf"))
        .expect_err("no such file");
    assert!(matches!(err, TokenizeError::Gguf { .. }), "{err}");
}

#[test]
fn shared_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<super::ModelTokenizer>();
    assert_send_sync::<super::IncrementalDecoder>();
    assert_send_sync::<super::StopMatcher>();
}
