//! The engine's own host time a step: what the GPU waits for between two steps, since the
//! engine launches step n+1 only after step n's tokens are back (docs/perf.md, "the time
//! between steps").
//!
//! `cargo run --release -p pagedserve-shard --example engine_bench [requests] [seed]`
//! (default 1,000 and 0). A model that returns its tokens at once ("sampled on the device",
//! as the CUDA backend does) runs a rate-inf burst of ShareGPT-like requests (prompts 4-1,000
//! tokens, answers 4-1,500, drawn from the seed) through the real engine thread, scheduler and
//! output streams, with the GPU shard's settings (`lof-paced`, 512-token budget, 1,024
//! sequences, prefix caching). With synchronous steps every microsecond it prints a step costs
//! is one a GPU would sit idle; the backend's staging (`cuda step` trace lines) comes on top.
//! `ENGINE_BENCH_OVERLAP=1` runs overlapped steps (`launch`/`collect`, what the CUDA backend
//! does since 2026-11-27): the same work, now done while the GPU runs the step before.

use std::time::Instant;

use pagedserve_proto::v1 as pb;
use pagedserve_shard::engine::{EngineConfig, PrefillPolicy, SchedulePolicy, spawn_engine};
use pagedserve_shard::model::{CausalLm, DeviceSampling, ModelError, ModelInfo, Picked, SeqChunk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Llama-3-8B's vocabulary and context; tokens come back at once and are never EOS.
struct InstantLm {
    info: ModelInfo,
    overlap: bool,
    launched: std::collections::VecDeque<Vec<u32>>,
}

fn draws(batch: &[SeqChunk<'_>]) -> impl Iterator<Item = u32> {
    batch
        .iter()
        .filter(|c| c.need_logits)
        .map(|c| 1_000 + (c.start_pos % 50_000) as u32)
}

impl CausalLm for InstantLm {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn block_size(&self) -> usize {
        16
    }
    fn num_kv_blocks(&self) -> usize {
        100_000
    }
    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let vocab = self.info.vocab_size;
        Ok(batch
            .iter()
            .filter(|c| c.need_logits)
            .map(|_| vec![0.0; vocab])
            .collect())
    }
    fn samples_on_device(&self) -> bool {
        true
    }
    fn forward_sampled(
        &mut self,
        batch: &[SeqChunk<'_>],
        _params: &[Option<DeviceSampling>],
    ) -> Option<Result<Vec<Picked>, ModelError>> {
        Some(Ok(draws(batch).map(Picked::Token).collect()))
    }
    fn can_launch(&self) -> bool {
        self.overlap
    }
    fn launch(
        &mut self,
        batch: &[SeqChunk<'_>],
        _params: &[DeviceSampling],
        _feeds: &[(usize, u32)],
    ) -> Result<(), ModelError> {
        self.launched.push_back(draws(batch).collect());
        Ok(())
    }
    fn collect(&mut self) -> Result<Vec<u32>, ModelError> {
        self.launched
            .pop_front()
            .ok_or_else(|| ModelError::Backend("nothing launched".into()))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let seed: u64 = args.next().map_or(Ok(0), |a| a.parse())?;
    let model = InstantLm {
        info: ModelInfo {
            name: "instant".into(),
            dtype: "none".into(),
            device: "cpu".into(),
            vocab_size: 128_256,
            max_context: 8_192,
            num_layers: 32,
            num_kv_heads: 8,
            head_dim: 128,
            eos_token_ids: vec![128_001],
            bos_token_id: None,
        },
        overlap: std::env::var_os("ENGINE_BENCH_OVERLAP").is_some_and(|v| v != "0"),
        launched: Default::default(),
    };
    let overlap = model.overlap;
    let config = EngineConfig {
        max_batch_tokens: 512,
        max_num_seqs: 1_024,
        prefill_policy: PrefillPolicy::Fifo,
        schedule_policy: SchedulePolicy::LofPaced,
        prefix_caching: true,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<pb::Request> = (0..n)
        .map(|id| pb::Request {
            id,
            prompt_ids: (0..rng.random_range(4..=1_000))
                .map(|_| rng.random_range(1_000..100_000))
                .collect(),
            stopping: Some(pb::StoppingCriteria {
                max_tokens: rng.random_range(4..=1_500),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let rows: usize = requests
        .iter()
        .map(|r| r.prompt_ids.len() + r.stopping.as_ref().map_or(0, |s| s.max_tokens as usize))
        .sum();
    let engine = spawn_engine(Box::new(model), config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (steps, tokens, secs) = runtime.block_on(async {
        let mut stream = engine.open_stream()?;
        let started = Instant::now();
        engine.submit(stream.id(), requests)?;
        let (mut steps, mut tokens, mut finished) = (0u64, 0u64, 0u64);
        while finished < n {
            let Some(out) = stream.recv().await else {
                break;
            };
            steps += 1;
            for o in &out.outputs {
                tokens += o.token_ids.len() as u64;
                finished += u64::from(o.finish_reason != pb::FinishReason::Unspecified as i32);
            }
        }
        Ok::<_, Box<dyn std::error::Error>>((steps, tokens, started.elapsed().as_secs_f64()))
    })?;
    engine.shutdown();
    println!("| requests | overlapped | rows | steps | tokens | s | µs a step | ns a row |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {n} | {overlap} | {rows} | {steps} | {tokens} | {secs:.3} | {:.1} | {:.0} |",
        secs * 1e6 / steps.max(1) as f64,
        secs * 1e9 / rows.max(1) as f64
    );
    Ok(())
}
