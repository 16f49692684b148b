//! Engine tests against the paged fake model (`test_model`).

use super::runner::Engine;
use super::test_model::{FAKE_EOS, FakeLm, ForwardLog, request};
use super::{Command, EngineConfig, PrefillPolicy, SchedulePolicy, StreamId};
use pagedserve_proto::v1 as pb;
use std::collections::HashMap;
use tokio::sync::mpsc;

const STREAM: StreamId = 7;

#[derive(Debug, Default, Clone, PartialEq)]
struct SeqResult {
    tokens: Vec<u32>,
    finish: i32,
    error: String,
    error_kind: i32,
    outputs: usize,
}

struct Harness {
    engine: Engine,
    rx: mpsc::UnboundedReceiver<pb::StepOutput>,
    log: ForwardLog,
    results: HashMap<u64, SeqResult>,
    last_stats: pb::ShardStats,
    steps: usize,
}

impl Harness {
    fn new(model: FakeLm, config: EngineConfig) -> Self {
        let log = model.log.clone();
        let mut engine = Engine::new(Box::new(model), config);
        let (sender, rx) = mpsc::unbounded_channel();
        let _ = engine.handle(Command::OpenStream {
            stream: STREAM,
            sender,
        });
        Self {
            engine,
            rx,
            log,
            results: HashMap::new(),
            last_stats: pb::ShardStats::default(),
            steps: 0,
        }
    }

    fn submit(&mut self, requests: Vec<pb::Request>) {
        let _ = self.engine.handle(Command::Submit {
            stream: STREAM,
            requests,
        });
    }

    fn step(&mut self) {
        self.engine.step();
        self.steps += 1;
        while let Ok(msg) = self.rx.try_recv() {
            self.last_stats = msg.stats.unwrap_or_default();
            for out in msg.outputs {
                let r = self.results.entry(out.id).or_default();
                r.tokens.extend(&out.token_ids);
                r.finish = out.finish_reason;
                r.error = out.error;
                r.error_kind = out.error_kind;
                r.outputs += 1;
                assert_eq!(r.tokens.len(), out.generated_tokens as usize);
            }
        }
    }

    fn run(&mut self) {
        for _ in 0..10_000 {
            if !self.engine.has_work() {
                return;
            }
            self.step();
        }
        panic!("engine did not finish");
    }

    fn free_blocks(&self) -> usize {
        self.engine.scheduler.pool.num_free()
    }

    fn forward_calls(&self) -> Vec<Vec<(usize, usize, bool)>> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 1 + (i * 7 + seed * 13) % 49)
        .collect()
}

fn config(max_batch_tokens: usize, max_num_seqs: usize) -> EngineConfig {
    EngineConfig {
        max_batch_tokens,
        max_num_seqs,
        prefill_policy: PrefillPolicy::Fifo,
        schedule_policy: SchedulePolicy::Fcfs,
        prefix_caching: true,
    }
}

fn lof(config: EngineConfig) -> EngineConfig {
    EngineConfig {
        schedule_policy: SchedulePolicy::Lof,
        ..config
    }
}

fn lof_paced(config: EngineConfig) -> EngineConfig {
    EngineConfig {
        schedule_policy: SchedulePolicy::LofPaced,
        ..config
    }
}

fn shared(max_batch_tokens: usize, max_num_seqs: usize) -> EngineConfig {
    EngineConfig {
        prefill_policy: PrefillPolicy::Shared,
        ..config(max_batch_tokens, max_num_seqs)
    }
}

fn solo(prompt: Vec<u32>, max_tokens: u32) -> SeqResult {
    let mut h = Harness::new(FakeLm::new(4, 256, 1024), EngineConfig::default());
    h.submit(vec![request(1, prompt, max_tokens)]);
    h.run();
    h.results.remove(&1).unwrap_or_default()
}

const LENGTH: i32 = pb::FinishReason::Length as i32;
const STOP: i32 = pb::FinishReason::Stop as i32;
const ERROR: i32 = pb::FinishReason::Error as i32;
const INVALID_REQUEST: i32 = pb::ErrorKind::InvalidRequest as i32;
const INTERNAL: i32 = pb::ErrorKind::Internal as i32;
const CANCELLED: i32 = pb::FinishReason::Cancelled as i32;

#[test]
fn batched_with_preemption_matches_solo_runs() {
    let lens = [3, 17, 30, 6, 11];
    let expected: Vec<SeqResult> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| solo(prompt(n, i as u32), 20))
        .collect();
    // 14 blocks of 4 = 56 tokens: the longest alone needs 50, all together ~160.
    for config in [
        config(64, 16),
        shared(64, 16),
        shared(24, 16),
        lof(config(64, 16)),
        lof(shared(24, 16)),
        lof_paced(config(64, 16)),
    ] {
        let mut h = Harness::new(FakeLm::new(4, 14, 1024), config);
        let reqs = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| request(i as u64, prompt(n, i as u32), 20))
            .collect();
        h.submit(reqs);
        h.run();
        for (i, want) in expected.iter().enumerate() {
            let got = &h.results[&(i as u64)];
            assert_eq!(got.tokens, want.tokens, "sequence {i}, {config:?}");
            assert_eq!(got.finish, LENGTH);
        }
        assert!(
            h.last_stats.preemptions_total > 0,
            "no preemption: {config:?}"
        );
        assert_eq!(h.free_blocks(), 14);
        let max_batch = h.forward_calls().iter().map(Vec::len).max();
        assert!(max_batch >= Some(2), "no shared steps: {config:?}");
    }
}

#[test]
fn shared_policy_splits_the_prefill_budget_and_fifo_does_not() {
    let reqs = || vec![request(1, prompt(40, 1), 2), request(2, prompt(4, 2), 2)];
    let mut fifo = Harness::new(FakeLm::new(4, 64, 1024), config(24, 4));
    fifo.submit(reqs());
    fifo.step();
    // FIFO: the long prompt takes the whole budget; the short one waits.
    assert_eq!(fifo.forward_calls()[0], vec![(0, 24, false)]);

    let mut split = Harness::new(FakeLm::new(4, 64, 1024), shared(24, 4));
    split.submit(reqs());
    split.step();
    // Shared: the short prompt gets all it needs (and its first token), the long one the rest.
    assert_eq!(split.forward_calls()[0], vec![(0, 20, false), (0, 4, true)]);
    split.run();
    let mut alone = Harness::new(FakeLm::new(4, 64, 1024), config(2048, 4));
    alone.submit(reqs());
    alone.run();
    for id in [1, 2] {
        assert_eq!(
            split.results[&id].tokens, alone.results[&id].tokens,
            "request {id}"
        );
    }
}

#[test]
fn admission_respects_budget_and_max_num_seqs() {
    let mut h = Harness::new(FakeLm::new(4, 64, 1024), config(10, 2));
    h.submit((0..3).map(|i| request(i, prompt(4, i as u32), 3)).collect());
    h.step();
    let first = h.forward_calls()[0].clone();
    // Two 4-token prompts fit the budget of 10; the third waits for max_num_seqs.
    assert_eq!(first, vec![(0, 4, true), (0, 4, true)]);
    assert_eq!(h.last_stats.running, 2);
    assert_eq!(h.last_stats.waiting, 1);
    h.run();
    for call in h.forward_calls() {
        assert!(call.iter().map(|c| c.1).sum::<usize>() <= 10);
        assert!(call.len() <= 2);
    }
    assert!(h.results.values().all(|r| r.tokens.len() == 3));
}

/// Steps `h` until it has no work, returning the ids in the order their sequences finished.
fn finish_order(h: &mut Harness) -> Vec<u64> {
    let mut finished = Vec::new();
    while h.engine.has_work() {
        h.step();
        let mut done: Vec<u64> = h
            .results
            .iter()
            .filter(|(id, r)| r.finish != 0 && !finished.contains(*id))
            .map(|(&id, _)| id)
            .collect();
        done.sort_unstable();
        finished.extend(done);
    }
    finished
}

#[test]
fn longest_output_first_admits_by_tokens_left() {
    // One sequence at a time: the order in which answers finish is the admission order.
    let max_tokens = [2, 9, 5, 9, 1];
    let order = |policy| {
        let mut h = Harness::new(
            FakeLm::new(4, 64, 1024),
            EngineConfig {
                schedule_policy: policy,
                ..config(8, 1)
            },
        );
        h.submit(
            (0..5)
                .map(|i| request(i, prompt(4, i as u32), max_tokens[i as usize]))
                .collect(),
        );
        let order = finish_order(&mut h);
        for (i, &n) in max_tokens.iter().enumerate() {
            assert_eq!(h.results[&(i as u64)].tokens.len(), n as usize);
        }
        order
    };
    assert_eq!(order(SchedulePolicy::Fcfs), vec![0, 1, 2, 3, 4]);
    // Longest first; the two 9-token answers keep their arrival order.
    assert_eq!(order(SchedulePolicy::Lof), vec![1, 3, 2, 0, 4]);
}

#[test]
fn longest_output_first_sorts_late_arrivals_in() {
    for (policy, want) in [
        (SchedulePolicy::Fcfs, vec![1, 2, 3]),
        (SchedulePolicy::Lof, vec![1, 3, 2]),
    ] {
        let mut h = Harness::new(
            FakeLm::new(4, 64, 1024),
            EngineConfig {
                schedule_policy: policy,
                ..config(4, 1)
            },
        );
        h.submit(vec![request(1, prompt(4, 1), 3)]);
        h.step();
        // 1 runs (nothing overtakes a running sequence); then a short and a long one arrive.
        h.submit(vec![
            request(2, prompt(4, 2), 2),
            request(3, prompt(4, 3), 6),
        ]);
        assert_eq!(finish_order(&mut h), want, "{policy:?}");
    }
}

/// `lof-paced`: the first step's budget is the queue's rows over its longest answer's steps
/// (+ 1/8, to a multiple of 128), not all of `max_batch_tokens`; every request still completes.
#[test]
fn lof_paced_spreads_the_queue_over_the_longest_answer() {
    let total = |policy: fn(EngineConfig) -> EngineConfig| {
        let mut h = Harness::new(FakeLm::new(4, 1024, 1024), policy(config(1024, 16)));
        let reqs = (0..8).map(|i| request(i + 1, prompt(200, i as u32), 2));
        h.submit(reqs.collect());
        h.run();
        assert_eq!(h.results.len(), 8);
        let first: usize = h.forward_calls()[0].iter().map(|c| c.1).sum();
        first
    };
    // 8 x (200 prompt rows + 1 decode row) = 1,608 rows over 2 steps, x 9/8 = 905: 896, the
    // nearest multiple of 128 (at least the even 804).
    assert_eq!(total(lof_paced), 896);
    assert_eq!(total(lof), 1024);
}

#[test]
fn long_prompt_prefills_in_chunks() {
    let want = solo(prompt(20, 3), 4);
    let mut h = Harness::new(FakeLm::new(4, 64, 1024), config(8, 4));
    h.submit(vec![request(1, prompt(20, 3), 4)]);
    h.run();
    let calls = h.forward_calls();
    assert_eq!(calls[0], vec![(0, 8, false)]);
    assert_eq!(calls[1], vec![(8, 8, false)]);
    assert_eq!(calls[2], vec![(16, 4, true)]);
    assert_eq!(calls[3], vec![(20, 1, true)]);
    assert_eq!(h.results[&1].tokens, want.tokens);
}

#[test]
fn decodes_share_steps_with_a_chunked_prefill() {
    let mut h = Harness::new(FakeLm::new(4, 64, 1024), config(6, 4));
    h.submit(vec![request(1, prompt(2, 1), 10)]);
    h.step();
    h.submit(vec![request(2, prompt(12, 2), 2)]);
    h.step();
    // The running decode goes first, the new prompt gets the rest of the budget.
    assert_eq!(h.forward_calls()[1], vec![(2, 1, true), (0, 5, false)]);
    assert_eq!(h.last_stats.step_decode_tokens, 1);
    assert_eq!(h.last_stats.step_prefill_tokens, 5);
}

#[test]
fn cancel_frees_blocks_at_once() {
    let mut h = Harness::new(FakeLm::new(4, 32, 1024), config(64, 8));
    h.submit(vec![
        request(1, prompt(9, 1), 100),
        request(2, prompt(5, 2), 100),
    ]);
    h.step();
    h.step();
    assert!(h.free_blocks() < 32);
    let _ = h.engine.handle(Command::Cancel {
        stream: STREAM,
        ids: vec![1, 2, 99],
    });
    assert_eq!(h.free_blocks(), 32);
    h.run();
    assert_eq!(h.results[&1].finish, CANCELLED);
    assert_eq!(h.results[&2].finish, CANCELLED);
    assert_eq!(h.results[&1].tokens.len(), 2);
}

#[test]
fn closed_stream_cancels_its_sequences() {
    let mut h = Harness::new(FakeLm::new(4, 32, 1024), config(64, 8));
    h.submit(vec![request(1, prompt(9, 1), 100)]);
    h.step();
    h.rx.close();
    h.step();
    assert!(!h.engine.has_work());
    assert_eq!(h.free_blocks(), 32);
}

#[test]
fn stop_token_ids_and_max_tokens() {
    let reference = solo(prompt(5, 4), 12);
    assert_eq!(reference.tokens.len(), 12);
    assert_eq!(reference.finish, LENGTH);
    let stop_at = reference.tokens[5];
    let first = reference
        .tokens
        .iter()
        .position(|&t| t == stop_at)
        .unwrap_or(5);
    let mut req = request(1, prompt(5, 4), 12);
    if let Some(s) = req.stopping.as_mut() {
        s.stop_token_ids = vec![stop_at];
    }
    let mut h = Harness::new(FakeLm::new(4, 32, 1024), EngineConfig::default());
    h.submit(vec![req]);
    h.run();
    assert_eq!(h.results[&1].tokens, reference.tokens[..=first].to_vec());
    assert_eq!(h.results[&1].finish, STOP);
}

#[test]
fn eos_stops_unless_ignored() {
    let mut model = FakeLm::new(4, 32, 1024);
    model.eos_at_len = Some(8);
    let mut h = Harness::new(model, EngineConfig::default());
    let mut ignoring = request(2, prompt(5, 1), 6);
    if let Some(s) = ignoring.stopping.as_mut() {
        s.ignore_eos = true;
    }
    h.submit(vec![request(1, prompt(5, 1), 6), ignoring]);
    h.run();
    let r = &h.results[&1];
    assert_eq!(r.tokens.len(), 4, "prompt 5 + 3 tokens reaches length 8");
    assert_eq!(r.tokens.last(), Some(&FAKE_EOS));
    assert_eq!(r.finish, STOP);
    assert_eq!(h.results[&2].tokens.len(), 6);
    assert_eq!(h.results[&2].finish, LENGTH);
}

#[test]
fn context_limit_gives_length() {
    let mut h = Harness::new(FakeLm::new(4, 32, 10), EngineConfig::default());
    h.submit(vec![request(1, prompt(7, 1), 100)]);
    h.run();
    assert_eq!(h.results[&1].tokens.len(), 3);
    assert_eq!(h.results[&1].finish, LENGTH);
}

#[test]
fn unservable_requests_fail_alone() {
    // 8 blocks of 4 = 32 tokens of cache; context 40.
    let mut h = Harness::new(FakeLm::new(4, 8, 40), EngineConfig::default());
    let mut bad_sampling = request(5, prompt(3, 1), 2);
    bad_sampling.sampling = Some(pb::SamplingParams {
        temperature: -1.0,
        ..Default::default()
    });
    h.submit(vec![
        request(1, vec![], 4),
        request(2, prompt(41, 1), 4),
        request(3, prompt(33, 1), 4),
        request(4, vec![1, 2, 999], 4),
        bad_sampling,
        request(6, prompt(3, 1), 0),
        request(7, prompt(6, 2), 3),
        request(7, prompt(6, 2), 3),
    ]);
    h.run();
    for id in 1..=6 {
        let r = &h.results[&id];
        assert_eq!(r.finish, ERROR, "request {id}");
        assert_eq!(r.error_kind, INVALID_REQUEST, "request {id}: {}", r.error);
        assert!(!r.error.is_empty());
        assert!(r.tokens.is_empty());
    }
    assert!(h.results[&2].error.contains("context"));
    assert!(h.results[&3].error.contains("KV blocks"));
    // The duplicate id is rejected; the first copy is served normally.
    assert_eq!(h.results[&7].tokens, solo(prompt(6, 2), 3).tokens);
    assert_eq!(h.results[&7].outputs, 4);
    assert_eq!(h.free_blocks(), 8);
}

/// A duplicate id is the stream owner's mistake, not the request's: INTERNAL, so the router
/// does not blame its client with a 400.
#[test]
fn duplicate_id_is_an_internal_error() {
    let mut h = Harness::new(FakeLm::new(4, 32, 1024), EngineConfig::default());
    h.submit(vec![
        request(7, prompt(6, 2), 3),
        request(7, prompt(6, 2), 3),
    ]);
    h.engine.step();
    let rejected: Vec<pb::SequenceOutput> = std::iter::from_fn(|| h.rx.try_recv().ok())
        .flat_map(|msg| msg.outputs)
        .filter(|out| out.finish_reason == ERROR)
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].error_kind, INTERNAL);
    assert!(
        rejected[0].error.contains("already running"),
        "{rejected:?}"
    );
}

#[test]
fn forward_error_fails_the_step_not_the_loop() {
    let model = FakeLm::new(4, 32, 1024);
    let fail = model.fail_next.clone();
    let mut h = Harness::new(model, EngineConfig::default());
    h.submit(vec![request(1, prompt(5, 1), 4)]);
    if let Ok(mut f) = fail.lock() {
        *f = true;
    }
    h.run();
    assert_eq!(h.results[&1].finish, ERROR);
    assert_eq!(h.results[&1].error_kind, INTERNAL);
    assert!(h.results[&1].error.contains("injected"));
    assert_eq!(h.free_blocks(), 32);
    h.submit(vec![request(2, prompt(5, 1), 4)]);
    h.run();
    assert_eq!(h.results[&2].tokens, solo(prompt(5, 1), 4).tokens);
}

/// Overlapped steps: a launch that fails mid-answer, while the step before is in flight,
/// ends the sequences it ran (with the tokens they had so far, placeholders dropped) and
/// nothing else; the step in flight still delivers, and later requests run normally.
#[test]
fn a_failed_overlapped_launch_fails_its_sequences_not_the_loop() {
    let mut model = FakeLm::new(4, 32, 1024);
    model.overlap = true;
    let fail = model.fail_next.clone();
    let mut h = Harness::new(model, config(64, 4));
    h.submit(vec![
        request(1, prompt(5, 1), 8),
        request(2, prompt(6, 2), 8),
    ]);
    for _ in 0..4 {
        h.step();
    }
    let before = h.results.get(&1).map_or(0, |r| r.tokens.len());
    assert!(before >= 2, "{before} tokens before the failure");
    if let Ok(mut f) = fail.lock() {
        *f = true;
    }
    h.run();
    for id in [1, 2] {
        let r = &h.results[&id];
        assert_eq!(r.finish, ERROR, "request {id}");
        assert!(r.error.contains("injected"), "{}", r.error);
        // Tokens delivered before the failure are the solo run's (the Harness checks each
        // output's generated_tokens against the tokens received).
        let want = solo(prompt(4 + id as usize, id as u32), 8).tokens;
        assert!(want.starts_with(&r.tokens), "request {id}: {:?}", r.tokens);
    }
    assert_eq!(h.free_blocks(), 32);
    assert!(h.engine.scheduler.keys_match_queues());
    h.submit(vec![request(3, prompt(5, 1), 4)]);
    h.run();
    assert_eq!(h.results[&3].tokens, solo(prompt(5, 1), 4).tokens);
}

#[test]
fn every_step_sends_one_message_per_stream() {
    let mut h = Harness::new(FakeLm::new(4, 64, 1024), config(64, 8));
    h.submit(
        (0..4)
            .map(|i| request(i, prompt(3 + i as usize, 1), 5))
            .collect(),
    );
    let mut messages = 0;
    while h.engine.has_work() {
        h.engine.step();
        let mut this_step = 0;
        while let Ok(msg) = h.rx.try_recv() {
            this_step += 1;
            assert!(msg.stats.is_some());
        }
        assert_eq!(this_step, 1);
        messages += 1;
    }
    assert_eq!(messages, 5);
}

#[test]
fn finished_and_cancelled_ids_can_be_reused_but_not_live_ones() {
    let mut h = Harness::new(FakeLm::new(4, 32, 1024), config(64, 8));
    h.submit(vec![
        request(1, prompt(5, 1), 2),
        request(2, prompt(5, 2), 100),
    ]);
    h.step();
    h.step();
    assert_eq!(h.results[&1].finish, LENGTH);
    let _ = h.engine.handle(Command::Cancel {
        stream: STREAM,
        ids: vec![2, 2, 2],
    });
    h.step(); // delivers the cancellation
    assert_eq!(h.results[&2].finish, CANCELLED);
    h.results.clear();
    // Live: 3 (twice in one Submit). Gone: 1 finished, 2 cancelled.
    h.submit(vec![
        request(3, prompt(4, 3), 3),
        request(3, prompt(4, 3), 3),
        request(1, prompt(5, 1), 2),
        request(2, prompt(6, 2), 3),
    ]);
    h.run();
    assert_eq!(h.results[&1].tokens, solo(prompt(5, 1), 2).tokens);
    assert_eq!(h.results[&2].tokens, solo(prompt(6, 2), 3).tokens);
    assert_eq!(h.results[&3].tokens, solo(prompt(4, 3), 3).tokens);
    // The copy was rejected: 3 tokens and one rejection.
    assert_eq!(h.results[&3].outputs, 4);
    assert!(h.engine.scheduler.keys_match_queues());
    assert_eq!(h.free_blocks(), 32);
}

/// splitmix64: a tiny seeded generator, so random scenarios replay exactly without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One request of a random scenario: submitted before step `arrive`, maybe cancelled
/// before step `cancel`.
struct Planned {
    request: pb::Request,
    arrive: usize,
    cancel: Option<usize>,
}

/// The fake model's size, so a scenario's model can be built twice (batched and solo).
#[derive(Debug, Clone, Copy)]
struct Shape {
    block_size: usize,
    num_blocks: usize,
    max_context: usize,
    eos_at_len: Option<usize>,
}

impl Shape {
    /// `overlap`: the engine launches overlapped steps (`overlap.rs`).
    fn model(&self, overlap: bool) -> FakeLm {
        let mut model = FakeLm::new(self.block_size, self.num_blocks, self.max_context);
        model.eos_at_len = self.eos_at_len;
        model.overlap = overlap;
        model
    }
}

/// A random engine shape (block size, tiny pools, budgets, both policies) and request mix
/// (some unservable, some cancelled, staggered arrivals).
fn random_scenario(rng: &mut Rng) -> (Shape, EngineConfig, Vec<Planned>) {
    let max_context = rng.range(2, 64);
    let shape = Shape {
        block_size: [1, 2, 4][rng.range(0, 2)],
        num_blocks: rng.range(1, 32),
        max_context,
        eos_at_len: rng.chance(20).then(|| rng.range(2, 40)),
    };
    let policy = match rng.chance(50) {
        true => PrefillPolicy::Shared,
        false => PrefillPolicy::Fifo,
    };
    let config = EngineConfig {
        max_batch_tokens: rng.range(1, 48),
        max_num_seqs: rng.range(1, 8),
        prefill_policy: policy,
        schedule_policy: match rng.chance(50) {
            true => SchedulePolicy::Lof,
            false => SchedulePolicy::Fcfs,
        },
        prefix_caching: rng.chance(75),
    };
    // Mostly servable prompts; a few too long for the context or the whole cache.
    let longest = max_context.min(shape.num_blocks * shape.block_size);
    let planned = (0..rng.range(1, 12))
        .map(|id| {
            let len = match rng.chance(10) {
                true => rng.range(1, max_context + 2),
                false => rng.range(1, longest),
            };
            let max_tokens = match rng.chance(5) {
                true => 0,
                false => rng.range(1, 32) as u32,
            };
            // Most prompts come from three families, each a prefix of the others of its
            // family, so the prefix cache has something to find.
            let family = match rng.chance(60) {
                true => rng.range(0, 2),
                false => rng.range(3, 1000),
            };
            Planned {
                request: request(id as u64, prompt(len, family as u32), max_tokens),
                arrive: rng.range(0, 12),
                cancel: rng.chance(25).then(|| rng.range(0, 40)),
            }
        })
        .collect();
    (shape, config, planned)
}

/// The same request alone in a same-sized engine with an unlimited budget.
fn solo_like(shape: Shape, req: &pb::Request) -> SeqResult {
    let mut h = Harness::new(shape.model(false), EngineConfig::default());
    h.submit(vec![req.clone()]);
    h.run();
    h.results.remove(&req.id).unwrap_or_default()
}

/// Runs scenario `seed` (with overlapped steps where `overlap`), checks it, and returns
/// (preemptions, cancelled sequences, prompt tokens found in the prefix cache).
fn run_scenario(seed: u64, overlap: bool) -> (u64, usize, u64) {
    let mut rng = Rng(seed);
    let (shape, config, mut planned) = random_scenario(&mut rng);
    if overlap && seed.is_multiple_of(3) {
        // Some requests need the host's sampler (logprobs): while one is queued, steps are
        // synchronous again, and the step in flight is collected first.
        for p in planned.iter_mut().filter(|p| p.request.id % 4 == 3) {
            p.request.logprobs = true;
        }
    }
    let want: Vec<SeqResult> = planned
        .iter()
        .map(|p| solo_like(shape, &p.request))
        .collect();
    let mut h = Harness::new(shape.model(overlap), config);
    for step in 0..20_000 {
        let arriving = planned.iter().filter(|p| p.arrive == step);
        h.submit(arriving.map(|p| p.request.clone()).collect());
        let cancelled: Vec<u64> = planned
            .iter()
            .filter(|p| p.cancel == Some(step))
            .map(|p| p.request.id)
            .collect();
        if !cancelled.is_empty() {
            let ids = cancelled;
            let _ = h.engine.handle(Command::Cancel {
                stream: STREAM,
                ids,
            });
        }
        if step > 12 && !h.engine.has_work() {
            break;
        }
        h.step();
        assert!(h.engine.scheduler.keys_match_queues(), "step {step}");
    }
    assert!(!h.engine.has_work(), "engine did not finish");
    for (p, want) in planned.iter().zip(&want) {
        let id = p.request.id;
        let got = h
            .results
            .get(&id)
            .unwrap_or_else(|| panic!("request {id}: no output"));
        if got.finish == CANCELLED {
            assert!(
                want.tokens.starts_with(&got.tokens),
                "request {id}: {got:?} vs {want:?}"
            );
        } else {
            let got = (&got.tokens, got.finish, &got.error);
            assert_eq!(
                got,
                (&want.tokens, want.finish, &want.error),
                "request {id}"
            );
        }
    }
    assert_eq!(h.free_blocks(), shape.num_blocks, "blocks leaked");
    for call in h.forward_calls() {
        assert!(call.iter().map(|c| c.1).sum::<usize>() <= config.max_batch_tokens);
        assert!(call.len() <= config.max_num_seqs);
    }
    let cancelled = h.results.values().filter(|r| r.finish == CANCELLED);
    let s = &h.last_stats;
    assert!(s.prefix_cache_hits_total <= s.prefix_cache_queries_total);
    if !config.prefix_caching {
        assert_eq!(s.prefix_cache_queries_total, 0);
    }
    (
        s.preemptions_total,
        cancelled.count(),
        s.prefix_cache_hits_total,
    )
}

#[test]
fn random_request_mixes_finish_like_solo_runs_and_free_every_block() {
    random_request_mixes(false);
}

/// The same mixes with overlapped steps (`overlap.rs`): placeholders fed by the step in
/// flight, wasted rows after EOS, preemption and cancellation while a step is in flight.
#[test]
fn overlapped_steps_finish_random_mixes_like_solo_runs_and_free_every_block() {
    random_request_mixes(true);
}

fn random_request_mixes(overlap: bool) {
    let (mut preempted, mut cancelled, mut cached) = (0, 0, 0);
    for seed in 0..400 {
        match std::panic::catch_unwind(|| run_scenario(seed, overlap)) {
            Ok((p, c, hits)) => {
                preempted += usize::from(p > 0);
                cancelled += c;
                cached += usize::from(hits > 0);
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("scenario {seed}: {message}");
            }
        }
    }
    // The mix must really exercise what it is for (a tuning change could make it trivial).
    assert!(preempted >= 40, "only {preempted} scenarios preempted");
    assert!(cancelled >= 40, "only {cancelled} sequences cancelled");
    assert!(cached >= 40, "only {cached} scenarios reused cached blocks");
}

/// `(start, len, need_logits)` of each prefill, where requests ran one at a time: the one
/// chunk of more than one token in its forward call.
fn prefills_of_lone_requests(h: &Harness) -> Vec<(usize, usize, bool)> {
    h.forward_calls()
        .iter()
        .filter(|c| c[0].1 > 1)
        .map(|c| c[0])
        .collect()
}

#[test]
fn a_repeated_prompt_reuses_the_cached_blocks_and_gives_the_same_tokens() {
    let p = prompt(10, 3);
    let want = solo(p.clone(), 5);
    let mut h = Harness::new(FakeLm::new(4, 16, 64), config(64, 4));
    h.submit(vec![request(1, p.clone(), 5)]);
    h.run();
    // Blocks 0 and 1 (tokens 0..8) are full prompt blocks; block 2 got full while decoding.
    h.submit(vec![request(2, p.clone(), 5)]);
    h.run();
    let mut longer = p.clone();
    longer.extend(&want.tokens[..2]); // the first turn's answer continues the prompt
    h.submit(vec![request(3, longer.clone(), 5)]);
    h.run();
    assert_eq!(h.results[&1], want);
    assert_eq!(h.results[&2], want);
    assert_eq!(h.results[&3], solo(longer, 5));
    let firsts = prefills_of_lone_requests(&h);
    // The first request computes all 10 prompt tokens; the second only the last 2 (8 found,
    // one token always left to compute); the third finds 12 of its 12 but must compute one:
    // blocks 0..2 hold 12 tokens, so 8 are taken and 4 computed.
    assert_eq!(firsts, vec![(0, 10, true), (8, 2, true), (8, 4, true)]);
    assert_eq!(h.last_stats.prefix_cache_queries_total, 10 + 10 + 12);
    assert_eq!(h.last_stats.prefix_cache_hits_total, 8 + 8);
    assert_eq!(h.free_blocks(), 16, "cached blocks count as free");
}

#[test]
fn without_prefix_caching_every_prompt_is_computed() {
    let p = prompt(10, 3);
    let no_cache = EngineConfig {
        prefix_caching: false,
        ..config(64, 4)
    };
    let mut h = Harness::new(FakeLm::new(4, 16, 64), no_cache);
    h.submit(vec![request(1, p.clone(), 3)]);
    h.run();
    h.submit(vec![request(2, p.clone(), 3)]);
    h.run();
    assert_eq!(h.results[&1], h.results[&2]);
    let prefills = prefills_of_lone_requests(&h);
    assert_eq!(prefills, vec![(0, 10, true), (0, 10, true)]);
    assert_eq!(h.last_stats.prefix_cache_queries_total, 0);
}

/// With overlapped steps a decode block fills while its last token is still a placeholder:
/// it must be registered with the token drawn, once known, or a later prompt that continues
/// the answer would miss it (or, worse, match the placeholder).
#[test]
fn overlapped_steps_register_answer_blocks_with_the_tokens_drawn() {
    let p = prompt(10, 3);
    let want = solo(p.clone(), 5);
    let mut model = FakeLm::new(4, 16, 64);
    model.overlap = true;
    let mut h = Harness::new(model, config(64, 4));
    h.submit(vec![request(1, p.clone(), 5)]);
    h.run();
    assert_eq!(h.results[&1], want);
    let first_turn = h.forward_calls().len();
    let mut longer = p.clone();
    longer.extend(&want.tokens[..3]); // 13 tokens: blocks 0..3 are full
    h.submit(vec![request(2, longer.clone(), 4)]);
    h.run();
    assert_eq!(h.results[&2], solo(longer, 4));
    assert_eq!(
        h.forward_calls()[first_turn],
        vec![(12, 1, true)],
        "block 2, filled by the answer, is found"
    );
    assert_eq!(h.last_stats.prefix_cache_hits_total, 12);
    assert_eq!(h.free_blocks(), 16);
}
