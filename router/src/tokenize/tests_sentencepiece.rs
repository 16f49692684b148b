//! A synthetic SentencePiece (`llama` GGUF model) vocabulary against transformers' GGUF
//! tokenizer builder (testdata/make_expected.py writes both).

use serde::Deserialize;

use super::gguf_vocab::GgufVocab;
use super::model_tokenizer::ModelTokenizer;

#[derive(Deserialize)]
struct Fixture {
    vocab: VocabJson,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct VocabJson {
    tokens: Vec<String>,
    token_type: Vec<i32>,
    scores: Vec<f32>,
    bos_token_id: u32,
    eos_token_id: u32,
    unk_token_id: u32,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("testdata/sentencepiece_expected.json")).expect("parses")
}

fn tokenizer(v: VocabJson) -> ModelTokenizer {
    let vocab = GgufVocab {
        model: "llama".into(),
        pre: None,
        tokens: v.tokens,
        token_types: v.token_type,
        merges: Vec::new(),
        scores: v.scores,
        bos_id: Some(v.bos_token_id),
        eos_id: Some(v.eos_token_id),
        extra_eos_ids: Vec::new(),
        unk_id: Some(v.unk_token_id),
        add_bos: true,
        add_eos: false,
        add_space_prefix: true,
        chat_template: None,
    };
    ModelTokenizer::from_vocab(&vocab).expect("sentencepiece vocabulary builds")
}

#[test]
fn sentencepiece_matches_transformers() {
    let Fixture { vocab, cases } = fixture();
    let tok = tokenizer(vocab);
    assert!(cases.len() >= 8);
    for case in &cases {
        let ids = tok.encode(&case.text, false).expect("encode");
        assert_eq!(ids, case.ids, "ids of {:?}", case.text);
        let with_bos = tok.encode(&case.text, true).expect("encode");
        assert_eq!(with_bos.first(), Some(&1), "BOS for {:?}", case.text);
        assert_eq!(tok.decode(&ids, false).expect("decode"), case.decoded);
        assert_eq!(
            tok.decode(&ids, true).expect("decode"),
            case.decoded_skip_special
        );
    }
}

#[test]
fn sentencepiece_token_bytes_and_streaming() {
    let Fixture { vocab, cases } = fixture();
    let tok = tokenizer(vocab);
    let hello = tok.token_to_id("\u{2581}hello").expect("piece");
    assert_eq!(tok.token_bytes(hello).as_deref(), Some(&b" hello"[..]));
    let byte_a = tok.token_to_id("<0x41>").expect("byte token");
    assert_eq!(tok.token_bytes(byte_a), Some(vec![0x41]));
    for case in &cases {
        // Prompt context keeps the leading "▁" of later pieces from being stripped.
        let prompt = tok.encode("hello", true).expect("encode");
        let mut decoder = tok.incremental_decoder(&prompt, true);
        let mut text = String::new();
        for id in &case.ids {
            let piece = decoder.push(*id).expect("push");
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            text.push_str(&piece);
        }
        text.push_str(&decoder.flush().expect("flush"));
        let mut all = prompt.clone();
        all.extend(&case.ids);
        let whole = tok.decode(&all, true).expect("decode");
        let prompt_text = tok.decode(&prompt, true).expect("decode");
        assert_eq!(format!("{prompt_text}{text}"), whole, "{:?}", case.text);
    }
}
