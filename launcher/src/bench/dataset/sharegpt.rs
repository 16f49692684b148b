//! ShareGPT (`ShareGPT_V3_unfiltered_cleaned_split.json` format) reading and vLLM's filter.
//!
//! The file is one JSON array of conversations. The copy in the PyPI package is cut off
//! mid-record, so a whole-file parse fails; [`read_records`] parses it record by record
//! and keeps every complete one.

use std::path::Path;

use pagedserve_router::tokenize::ModelTokenizer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use super::BenchRequest;
use crate::bench::error::{BenchError, Result};

#[derive(Debug, Deserialize)]
pub struct Conversation {
    #[serde(default)]
    pub conversations: Vec<Turn>,
}

#[derive(Debug, Deserialize)]
pub struct Turn {
    #[serde(default)]
    pub value: String,
}

/// The complete records of a (possibly truncated) ShareGPT array.
#[derive(Debug)]
pub struct Records {
    pub conversations: Vec<Conversation>,
    /// True when the file ended inside a record (that record was dropped).
    pub truncated: bool,
}

/// Parses `[rec, rec, ...` one record at a time; a record cut off by the end of the data
/// ends the array, any other syntax error is an error.
pub fn read_records(data: &[u8], path: &Path) -> Result<Records> {
    let fail = |message: String| BenchError::Dataset {
        path: path.to_owned(),
        message,
    };
    let mut pos = skip_ws(data, 0);
    if data.get(pos) != Some(&b'[') {
        return Err(fail("not a JSON array of conversations".into()));
    }
    pos += 1;
    let mut conversations = Vec::new();
    loop {
        pos = skip_ws(data, pos);
        match data.get(pos) {
            None => {
                return Ok(Records {
                    conversations,
                    truncated: true,
                });
            }
            Some(b']') => {
                return Ok(Records {
                    conversations,
                    truncated: false,
                });
            }
            Some(b',') if !conversations.is_empty() => {
                pos = skip_ws(data, pos + 1);
            }
            Some(_) if conversations.is_empty() => {}
            Some(c) => {
                return Err(fail(format!(
                    "expected `,` or `]` after record {} at byte {pos}, found `{}`",
                    conversations.len(),
                    char::from(*c)
                )));
            }
        }
        let rest = data.get(pos..).unwrap_or_default();
        let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<Conversation>();
        match stream.next() {
            None => {
                return Ok(Records {
                    conversations,
                    truncated: true,
                });
            }
            Some(Ok(record)) => {
                conversations.push(record);
                pos += stream.byte_offset();
            }
            Some(Err(err)) if err.is_eof() => {
                return Ok(Records {
                    conversations,
                    truncated: true,
                });
            }
            Some(Err(err)) => {
                let n = conversations.len();
                return Err(fail(format!("record {n} (byte {pos}): {err}")));
            }
        }
    }
}

fn skip_ws(data: &[u8], mut pos: usize) -> usize {
    while data.get(pos).is_some_and(u8::is_ascii_whitespace) {
        pos += 1;
    }
    pos
}

/// vLLM's `sample_sharegpt_requests`: first two turns of conversations that have two,
/// shuffled with `seed`, then kept in order until `num_prompts` pass the length filter.
pub fn sample(
    conversations: &[Conversation],
    num_prompts: usize,
    seed: u64,
    fixed_output_len: Option<usize>,
    tokenizer: &ModelTokenizer,
) -> Result<Vec<BenchRequest>> {
    let mut pairs: Vec<(&str, &str)> = conversations
        .iter()
        .filter_map(|c| match c.conversations.as_slice() {
            [first, second, ..] => Some((first.value.as_str(), second.value.as_str())),
            _ => None,
        })
        .collect();
    pairs.shuffle(&mut StdRng::seed_from_u64(seed));
    // Not `num_prompts`: a huge count meant as "all of them" (usize::MAX) panicked with
    // "capacity overflow" before anything was sent.
    let mut out = Vec::with_capacity(num_prompts.min(pairs.len()));
    for (prompt, completion) in pairs {
        if out.len() == num_prompts {
            break;
        }
        // Like HF `tokenizer(text).input_ids`: special tokens added (none for SmolLM2).
        let prompt_len = tokenizer.encode(prompt, true)?.len();
        let output_len = match fixed_output_len {
            Some(n) => n,
            None => tokenizer.encode(completion, true)?.len(),
        };
        if keep(prompt_len, output_len, fixed_output_len.is_some()) {
            out.push(BenchRequest {
                prompt: prompt.to_owned(),
                prompt_len,
                output_len,
            });
        }
    }
    Ok(out)
}

/// vLLM's filter: too short (< 4 tokens) or too long (prompt > 1024, total > 2048) pairs go.
pub fn keep(prompt_len: usize, output_len: usize, fixed_output: bool) -> bool {
    let too_short = prompt_len < 4 || (!fixed_output && output_len < 4);
    let too_long = prompt_len > 1024 || prompt_len + output_len > 2048;
    !too_short && !too_long
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Records> {
        read_records(text.as_bytes(), Path::new("t.json"))
    }

    const REC: &str =
        r#"{"id":"a","conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":"yo"}]}"#;

    #[test]
    fn complete_array_is_read_whole() {
        let recs = read(&format!(" [ {REC} ,\n{REC}]\n")).expect("valid");
        assert_eq!(recs.conversations.len(), 2);
        assert!(!recs.truncated);
        assert_eq!(recs.conversations[1].conversations[1].value, "yo");
    }

    #[test]
    fn truncated_record_is_dropped_and_reported() {
        let text = format!("[{REC}, {REC}, {}", &REC[..40]);
        let recs = read(&text).expect("truncation is not an error");
        assert_eq!(recs.conversations.len(), 2);
        assert!(recs.truncated);
        let cut_after_comma = read(&format!("[{REC},")).expect("ok");
        assert_eq!(cut_after_comma.conversations.len(), 1);
        assert!(cut_after_comma.truncated);
    }

    #[test]
    fn empty_array_and_syntax_errors() {
        assert_eq!(read("[]").expect("empty").conversations.len(), 0);
        assert!(read("{}").is_err(), "not an array");
        assert!(read(&format!("[{REC} {REC}]")).is_err(), "missing comma");
        let err = read(&format!("[{REC}, {{\"conversations\": 5}}]")).expect_err("bad type");
        assert!(err.to_string().contains("record 1"), "{err}");
    }

    #[test]
    fn filter_matches_vllm() {
        assert!(keep(4, 4, false));
        assert!(!keep(3, 100, false), "prompt under 4 tokens");
        assert!(!keep(100, 3, false), "output under 4 tokens");
        assert!(
            keep(100, 3, true),
            "fixed output length skips the output check"
        );
        assert!(keep(1024, 1024, false));
        assert!(!keep(1025, 10, false), "prompt over 1024");
        assert!(!keep(1000, 1049, false), "total over 2048");
    }
}

#[cfg(test)]
mod fixture_tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn truncated_fixture_keeps_its_complete_records() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../integration-tests/data/sharegpt_small.json");
        let data = std::fs::read(&path).expect("fixture");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&data).is_err(),
            "cut off"
        );
        let recs = read_records(&data, &path).expect("complete records are kept");
        assert!(recs.truncated);
        assert_eq!(recs.conversations.len(), 7);
        assert_eq!(recs.conversations[1].conversations.len(), 4);
        assert_eq!(recs.conversations[6].conversations[1].value, "4");
    }

    /// With the default model's tokenizer, vLLM's filter keeps a, b, e and f of the fixture.
    #[test]
    fn fixture_filter_with_the_default_tokenizer() {
        let Some(model) = crate::default_model::default_model_path().filter(|p| p.is_file()) else {
            eprintln!("default model not cached; skipping");
            return;
        };
        let tok = ModelTokenizer::from_gguf(&model).expect("tokenizer");
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../integration-tests/data/sharegpt_small.json");
        let data = std::fs::read(&path).expect("fixture");
        let recs = read_records(&data, &path).expect("records");
        let reqs = sample(&recs.conversations, 100, 0, None, &tok).expect("sample");
        let mut prompts: Vec<&str> = reqs.iter().map(|r| &r.prompt[..12]).collect();
        prompts.sort_unstable();
        assert_eq!(
            prompts,
            [
                "Give me one ",
                "Name the thr",
                "What is the ",
                "Write a haik"
            ]
        );
        let tip = reqs
            .iter()
            .find(|r| r.prompt.starts_with("Give"))
            .expect("f");
        let want = tok
            .encode("Give me one short tip for learning Rust.", true)
            .expect("ids");
        assert_eq!(tip.prompt_len, want.len());
        let only_two = sample(&recs.conversations, 2, 0, None, &tok).expect("sample");
        assert_eq!(only_two.len(), 2, "stops at num_prompts");
        let all = sample(&recs.conversations, usize::MAX, 0, None, &tok).expect("sample");
        assert_eq!(all.len(), 4, "a count past the dataset takes all it keeps");
    }
}
