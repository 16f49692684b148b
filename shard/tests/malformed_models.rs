//! Model files are user input: a truncated download, a corrupt disk or a crafted file must
//! fail to load with an error, never a panic or an abort from a huge allocation. A tiny
//! valid GGUF (written here with candle's writer) and the tiny HF llama fixture are cut at
//! many offsets and have bytes flipped by a seeded generator; every load must return (Ok or
//! Err), and the targeted header edits must give an error saying what is wrong.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use pagedserve_shard::model::{CausalLm, LoadOptions, ModelError, SeqChunk, load_model};

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const FFN: usize = 16;
const VOCAB: usize = 16;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("pagedserve-malformed-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: reproducible mutations without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn opts(path: &Path) -> LoadOptions {
    LoadOptions {
        model_path: path.to_path_buf(),
        num_kv_blocks: Some(4),
        block_size: 4,
        kv_cache_bytes: 0,
        ..LoadOptions::default()
    }
}

/// Loads `path`; `Err(message)` if loading panicked.
fn try_load(path: &Path) -> Result<Result<Box<dyn CausalLm>, ModelError>, String> {
    catch_unwind(AssertUnwindSafe(|| load_model(&opts(path)))).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn f32_tensor(dims: &[usize], seed: usize) -> QTensor {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7 + seed) % 13) as f32 / 13.0 - 0.5)
        .collect();
    let t = Tensor::from_vec(data, dims, &Device::Cpu).expect("tensor");
    QTensor::quantize(&t, GgmlDType::F32).expect("quantize")
}

fn tiny_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.context_length", Value::U32(64)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ]
}

fn tiny_tensors() -> Vec<(String, QTensor)> {
    let hd = HIDDEN / HEADS;
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("token_embd.weight", vec![VOCAB, HIDDEN]),
        ("output_norm.weight", vec![HIDDEN]),
        ("blk.0.attn_norm.weight", vec![HIDDEN]),
        ("blk.0.ffn_norm.weight", vec![HIDDEN]),
        ("blk.0.attn_q.weight", vec![HEADS * hd, HIDDEN]),
        ("blk.0.attn_k.weight", vec![KV_HEADS * hd, HIDDEN]),
        ("blk.0.attn_v.weight", vec![KV_HEADS * hd, HIDDEN]),
        ("blk.0.attn_output.weight", vec![HIDDEN, HEADS * hd]),
        ("blk.0.ffn_gate.weight", vec![FFN, HIDDEN]),
        ("blk.0.ffn_up.weight", vec![FFN, HIDDEN]),
        ("blk.0.ffn_down.weight", vec![HIDDEN, FFN]),
    ];
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, dims))| (name.to_string(), f32_tensor(&dims, i)))
        .collect()
}

fn write_gguf(path: &Path, metadata: &[(&str, Value)], tensors: &[(String, QTensor)]) {
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).expect("create gguf");
    gguf_file::write(&mut f, &md, &ts).expect("write gguf");
}

fn tiny_gguf_bytes(dir: &Path) -> Vec<u8> {
    let path = dir.join("valid.gguf");
    write_gguf(&path, &tiny_metadata(), &tiny_tensors());
    std::fs::read(&path).expect("read back")
}

/// Writes `bytes` as `name` in `dir` and loads it; panics (the test failure) if loading panics.
fn load_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<Box<dyn CausalLm>, ModelError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write mutated file");
    try_load(&path).unwrap_or_else(|msg| panic!("loading {name} panicked: {msg}"))
}

#[test]
fn tiny_gguf_loads() {
    let dir = TempDir::new("valid");
    let bytes = tiny_gguf_bytes(&dir.0);
    let model = load_bytes(&dir.0, "valid.gguf", &bytes).expect("valid tiny gguf loads");
    assert_eq!(model.info().vocab_size, VOCAB);
}

#[test]
fn truncated_gguf_is_an_error_at_every_offset() {
    let dir = TempDir::new("trunc");
    let bytes = tiny_gguf_bytes(&dir.0);
    let mut panics = Vec::new();
    for len in 0..bytes.len() {
        let path = dir.0.join("cut.gguf");
        std::fs::write(&path, &bytes[..len]).expect("write");
        match try_load(&path) {
            Err(msg) => panics.push(format!("{len}: {msg}")),
            Ok(Ok(_)) => panics.push(format!("{len}: loaded a truncated file")),
            Ok(Err(_)) => {}
        }
    }
    assert!(panics.is_empty(), "{panics:#?}");
}

#[test]
fn gguf_byte_flips_never_panic() {
    let dir = TempDir::new("flips");
    let bytes = tiny_gguf_bytes(&dir.0);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut panics = Vec::new();
    // Most flips land in the header (where the parser decides things), some in the data.
    let header = bytes.len().min(1200);
    for round in 0..400 {
        let mut m = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let at = if rng.below(4) == 0 {
                rng.below(m.len())
            } else {
                rng.below(header)
            };
            m[at] = match rng.below(3) {
                0 => m[at] ^ (1 << rng.below(8)),
                1 => 0xff,
                _ => rng.next() as u8,
            };
        }
        let path = dir.0.join("flip.gguf");
        std::fs::write(&path, &m).expect("write");
        if let Err(msg) = try_load(&path) {
            panics.push(format!("round {round}: {msg}"));
        }
    }
    assert!(panics.is_empty(), "{panics:#?}");
}

/// Overwrites the `n`-th u64 dimension of tensor `name` in a GGUF v2/v3 file.
fn set_dim(bytes: &mut [u8], name: &str, n: usize, value: u64) {
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("tensor name in header");
    let dim = at + name.len() + 4 + 8 * n;
    bytes[dim..dim + 8].copy_from_slice(&value.to_le_bytes());
}

fn load_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    match load_bytes(dir, name, bytes) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_tensor_shape_overflow_is_an_error() {
    let dir = TempDir::new("overflow");
    let mut bytes = tiny_gguf_bytes(&dir.0);
    set_dim(&mut bytes, "blk.0.ffn_up.weight", 0, 1 << 40);
    set_dim(&mut bytes, "blk.0.ffn_up.weight", 1, 1 << 40);
    let err = load_err(&dir.0, "overflow.gguf", &bytes);
    assert!(
        err.contains("overflow.gguf") && err.contains("blk.0.ffn_up.weight"),
        "{err}"
    );
    assert!(err.contains("overflows"), "{err}");
}

#[test]
fn gguf_tensor_past_the_end_is_an_error_naming_the_tensor() {
    let dir = TempDir::new("pastend");
    let mut bytes = tiny_gguf_bytes(&dir.0);
    set_dim(&mut bytes, "blk.0.ffn_down.weight", 1, 1 << 20);
    let err = load_err(&dir.0, "big.gguf", &bytes);
    assert!(
        err.contains("blk.0.ffn_down.weight") && err.contains("past the end"),
        "{err}"
    );
}

fn gguf_with(dir: &Path, key: &'static str, value: Value) -> Vec<u8> {
    let mut md = tiny_metadata();
    md.retain(|(k, _)| *k != key);
    md.push((key, value));
    let path = dir.join("edited.gguf");
    write_gguf(&path, &md, &tiny_tensors());
    std::fs::read(&path).expect("read back")
}

/// A context length of 2^32 - 1 used to size the RoPE table (positions x rope_dim floats,
/// 64 GiB here) and abort on allocation; the table now stops at what the KV cache holds.
#[test]
fn huge_context_length_does_not_size_allocations() {
    let dir = TempDir::new("ctx");
    let bytes = gguf_with(&dir.0, "llama.context_length", Value::U32(u32::MAX));
    let model = load_bytes(&dir.0, "ctx.gguf", &bytes).expect("loads");
    assert_eq!(model.info().max_context, u32::MAX as usize);
}

/// `general.alignment = 0` made candle's reader divide by zero while computing where the
/// tensor data starts.
#[test]
fn zero_alignment_is_an_error() {
    let dir = TempDir::new("align");
    let bytes = gguf_with(&dir.0, "general.alignment", Value::U32(0));
    let err = load_err(&dir.0, "align.gguf", &bytes);
    assert!(
        err.contains("align.gguf") && err.contains("alignment"),
        "{err}"
    );
}

fn gguf_with_shape(dir: &Path, name: &str, dims: &[usize]) -> Vec<u8> {
    let mut tensors = tiny_tensors();
    for (n, t) in tensors.iter_mut() {
        if n == name {
            *t = f32_tensor(dims, 0);
        }
    }
    let path = dir.join("shaped.gguf");
    write_gguf(&path, &tiny_metadata(), &tensors);
    std::fs::read(&path).expect("read back")
}

/// A tensor whose shape disagrees with the config must fail the load with its name, not
/// load and then panic (or compute garbage) in the first forward pass.
#[test]
fn tensor_shapes_must_match_the_config() {
    let dir = TempDir::new("shapes");
    let hd = HIDDEN / HEADS;
    let cases: Vec<(&str, Vec<usize>)> = vec![
        ("blk.0.attn_q.weight", vec![HEADS * hd, HIDDEN + 4]),
        ("blk.0.attn_k.weight", vec![2 * KV_HEADS * hd, HIDDEN]),
        ("blk.0.attn_v.weight", vec![KV_HEADS * hd]),
        ("blk.0.attn_output.weight", vec![HIDDEN, 2 * HEADS * hd]),
        ("blk.0.ffn_gate.weight", vec![FFN + 4, HIDDEN]),
        ("blk.0.ffn_up.weight", vec![FFN, 2 * HIDDEN]),
        ("blk.0.ffn_down.weight", vec![HIDDEN, FFN / 2]),
        ("blk.0.attn_norm.weight", vec![HIDDEN * 2]),
        ("blk.0.ffn_norm.weight", vec![1]),
        ("output_norm.weight", vec![HIDDEN + 4]),
    ];
    let mut wrong = Vec::new();
    for (name, dims) in cases {
        let bytes = gguf_with_shape(&dir.0, name, &dims);
        let path = dir.0.join("shaped.gguf");
        std::fs::write(&path, &bytes).expect("write");
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            let mut model = load_model(&opts(&path))?;
            let chunk = SeqChunk {
                tokens: &[1, 2, 3],
                start_pos: 0,
                block_table: &[0],
                need_logits: true,
            };
            model.forward(&[chunk])
        }));
        match stepped {
            Err(_) => wrong.push(format!("{name} {dims:?}: panicked")),
            Ok(Ok(_)) => wrong.push(format!("{name} {dims:?}: loaded and ran")),
            Ok(Err(e)) if !e.to_string().contains(name) => {
                wrong.push(format!("{name} {dims:?}: error without the name: {e}"))
            }
            Ok(Err(_)) => {}
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Config values no model has are errors at load, naming the value.
#[test]
fn absurd_gguf_config_values_are_errors() {
    let dir = TempDir::new("cfg");
    let cases = [
        ("llama.embedding_length", Value::U32(0), "hidden size is 0"),
        (
            "llama.feed_forward_length",
            Value::U32(0),
            "feed-forward size is 0",
        ),
        ("llama.block_count", Value::U32(0), "layer count is 0"),
        (
            "llama.block_count",
            Value::U64(1 << 60),
            "missing tensor blk.1",
        ),
        ("llama.attention.key_length", Value::U32(0), "head dim is 0"),
        (
            "llama.attention.key_length",
            Value::U64(1 << 63),
            "overflows",
        ),
        ("llama.context_length", Value::U32(0), "context length is 0"),
        ("llama.rope.freq_base", Value::F32(f32::NAN), "rope base"),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(-1.0),
            "epsilon",
        ),
        (
            "llama.attention.head_count",
            Value::U32(4),
            "blk.0.attn_k.weight",
        ),
    ];
    for (key, value, want) in cases {
        let bytes = gguf_with(&dir.0, key, value.clone());
        let err = load_err(&dir.0, "cfg.gguf", &bytes);
        assert!(err.contains(want), "{key} = {value:?}: {err}");
        assert!(err.contains("cfg.gguf"), "{key} = {value:?}: {err}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn hf_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf/llama")
}

fn hf_load_err(dir: &Path) -> String {
    match try_load(dir).unwrap_or_else(|msg| panic!("{} panicked: {msg}", dir.display())) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn absurd_hf_config_values_are_errors() {
    let tmp = TempDir::new("hfcfg");
    let text = std::fs::read_to_string(hf_fixture().join("config.json")).expect("config");
    let cases = [
        (
            "\"hidden_size\": 128",
            "\"hidden_size\": 0",
            "hidden size is 0",
        ),
        (
            "\"num_key_value_heads\": 1",
            "\"num_key_value_heads\": 0",
            "KV heads",
        ),
        (
            "\"num_attention_heads\": 2",
            "\"num_attention_heads\": 3",
            "blk.0.attn_q.weight",
        ),
        (
            "\"head_dim\": 64",
            "\"head_dim\": 32",
            "blk.0.attn_q.weight",
        ),
        (
            "\"intermediate_size\": 128",
            "\"intermediate_size\": 0",
            "feed-forward",
        ),
        (
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 0",
            "layer count",
        ),
        (
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 3",
            "blk.2",
        ),
        ("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 0", "epsilon"),
        (
            "\"max_position_embeddings\": 128",
            "\"max_position_embeddings\": 0",
            "context",
        ),
        ("\"hidden_size\": 128", "\"hidden_size\": -1", "config.json"),
    ];
    for (n, (from, to, want)) in cases.into_iter().enumerate() {
        let dir = tmp.0.join(format!("case{n}"));
        copy_dir(&hf_fixture(), &dir);
        assert!(text.contains(from), "{from}");
        std::fs::write(dir.join("config.json"), text.replace(from, to)).expect("write");
        let err = hf_load_err(&dir);
        assert!(err.contains(want), "{to}: {err}");
    }
}

/// The HF fixture's `model.safetensors` replaced by `bytes`.
fn hf_with_weights(root: &Path, bytes: &[u8]) -> PathBuf {
    let dir = root.join("st");
    if !dir.exists() {
        copy_dir(&hf_fixture(), &dir);
    }
    std::fs::write(dir.join("model.safetensors"), bytes).expect("write");
    dir
}

#[test]
fn truncated_or_flipped_safetensors_never_panic() {
    let tmp = TempDir::new("st");
    let bytes = std::fs::read(hf_fixture().join("model.safetensors")).expect("fixture");
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    // Every cut in and just past the header, then a stride through the data.
    let cuts = (0..header + 64).chain((header + 64..bytes.len()).step_by(4099));
    let mut wrong = Vec::new();
    for len in cuts {
        let dir = hf_with_weights(&tmp.0, &bytes[..len]);
        match try_load(&dir) {
            Err(msg) => wrong.push(format!("cut {len}: panicked: {msg}")),
            Ok(Ok(_)) => wrong.push(format!("cut {len}: loaded")),
            Ok(Err(e)) if !e.to_string().contains("safetensors") => {
                wrong.push(format!("cut {len}: error names no file: {e}"))
            }
            Ok(Err(_)) => {}
        }
    }
    let mut rng = Rng(0xfeed_beef_0123_4567);
    for round in 0..300 {
        let mut m = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(header);
            m[at] = match rng.below(2) {
                0 => m[at] ^ (1 << rng.below(8)),
                _ => b"0123456789[]{},:\"FBU"[rng.below(20)],
            };
        }
        let dir = hf_with_weights(&tmp.0, &m);
        if let Err(msg) = try_load(&dir) {
            wrong.push(format!("flip round {round}: panicked: {msg}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
